// Runs kernels/causal_attention.cu and kernels/flash_attention.cu on the host, with the
// launches of src/model/ops/causal_attention_cuda.rs in the same order and shapes, for
// tests/attention_kernel_host.rs. Usage: causal_attention IN OUT. causal_attention.cu's
// kernels run thread by thread (host_launch), flash_attention.cu's a block at a time with
// a std::thread per GPU thread (host_launch_blocks).
//
// IN (little-endian): u32 rows, heads, kv_heads, d, positions, dtype (0 f32, 1 bf16,
// 2 f16), tiled (1: flash_attention.cu's forward and backward kernels, bf16 and f16 only,
// as the driver runs them there), segments;
// u32 (first, len) per segment; f32 q [rows, heads·d], k and v
// [rows, kv_heads·d], dout [rows, heads·d], cos and sin [positions, d/2]. For bf16 and f16,
// q, k, v and dout are rounded to the dtype on reading and the kernels run on it.
// OUT: f32 out [rows, heads·d], then f32 [rows, (heads + 2·kv_heads)·d] (dq, dk, dv).

#include "../../kernels/causal_attention.cu"
#include "../../kernels/flash_attention.cu"

#include <cstdio>
#include <cstdlib>
#include <vector>

static const uint32_t BLOCK = 128;

static uint32_t blocks_for(size_t items) { return uint32_t((items + BLOCK - 1) / BLOCK); }

template <typename T>
struct Kernels;

#define KERNELS(T, NAME)                                                   \
    template <>                                                            \
    struct Kernels<T> {                                                    \
        static constexpr auto load = attention_load_##NAME;                \
        static constexpr auto store_grad = attention_store_grad_##NAME;    \
        static auto forward(uint32_t d) {                                  \
            return d == 64 ? attention_forward_##NAME##_64                 \
                           : attention_forward_##NAME##_128;               \
        }                                                                  \
        static auto backward_rows(uint32_t d) {                            \
            return d == 64 ? attention_backward_rows_##NAME##_64           \
                           : attention_backward_rows_##NAME##_128;         \
        }                                                                  \
        static auto backward_keys(uint32_t d) {                            \
            return d == 64 ? attention_backward_keys_##NAME##_64           \
                           : attention_backward_keys_##NAME##_128;         \
        }                                                                  \
    };
KERNELS(float, f32)
KERNELS(__nv_bfloat16, bf16)
KERNELS(__half, f16)

template <typename T>
struct TiledKernels;

#define TILED_KERNELS(T, NAME)                                              \
    template <>                                                             \
    struct TiledKernels<T> {                                                \
        static auto forward(uint32_t d) {                                   \
            return d == 64 ? flash_attention_forward_##NAME##_64            \
                           : flash_attention_forward_##NAME##_128;          \
        }                                                                   \
        static auto backward_rows(uint32_t d) {                             \
            return d == 64 ? flash_attention_backward_rows_##NAME##_64      \
                           : flash_attention_backward_rows_##NAME##_128;    \
        }                                                                   \
        static auto backward_keys(uint32_t d) {                             \
            return d == 64 ? flash_attention_backward_keys_##NAME##_64      \
                           : flash_attention_backward_keys_##NAME##_128;    \
        }                                                                   \
    };
TILED_KERNELS(__nv_bfloat16, bf16)
TILED_KERNELS(__half, f16)

// A tiled kernel's threads per block for head size d (`Shape` is its ForwardShape, ...).
template <template <int> class Shape>
static uint32_t tiled_threads(uint32_t d) {
    return d == 64 ? Shape<64>::THREADS : Shape<128>::THREADS;
}

// A tiled kernel's grid: blocks of `per_block` rows by heads.
static HostGrid tiled_grid(uint32_t rows, uint32_t heads, uint32_t per_block) {
    return {(rows + per_block - 1) / per_block, heads};
}

struct Problem {
    uint32_t rows, heads, kv_heads, d, positions;
    std::vector<uint32_t> first, len;
    std::vector<float> q, k, v, dout, cos, sin;
};

template <typename T>
static std::vector<T> converted(const std::vector<float> &x) {
    std::vector<T> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) store(&out[i], x[i]);
    return out;
}

template <typename T>
static void run(const Problem &p, bool tiled, FILE *out_file) {
    using K = Kernels<T>;
    const uint32_t rows = p.rows, h = p.heads, kvh = p.kv_heads, d = p.d;
    const float scale = 1.0f / std::sqrt(float(d));
    const auto q = converted<T>(p.q), k = converted<T>(p.k), v = converted<T>(p.v);
    const auto dout = converted<T>(p.dout);
    const uint32_t *first = p.first.data(), *len = p.len.data();
    const float *cos = p.cos.data(), *sin = p.sin.data();
    auto load = [&](const std::vector<T> &x, uint32_t heads, uint32_t rotate) {
        std::vector<float> f(size_t(rows) * heads * d);
        host_launch(blocks_for(size_t(rows) * heads * d / 2), BLOCK, K::load, x.data(),
                    f.data(), first, len, cos, sin, rows, heads, d, rotate);
        return f;
    };

    std::vector<T> out(size_t(rows) * h * d);
    std::vector<float> stats(size_t(rows) * h * 2), dq(size_t(rows) * h * d);
    std::vector<float> dk(size_t(rows) * h * d), dv(size_t(rows) * h * d);
    if constexpr (!std::is_same<T, float>::value) {
        if (tiled) {
            using TK = TiledKernels<T>;
            const bool d64 = d == 64;
            host_launch_blocks(
                tiled_grid(rows, h, d64 ? ForwardShape<64>::ROWS : ForwardShape<128>::ROWS),
                tiled_threads<ForwardShape>(d), TK::forward(d), q.data(), k.data(), v.data(),
                out.data(), first, len, cos, sin, rows, h, kvh, scale);
            host_launch_blocks(
                tiled_grid(rows, h,
                           d64 ? BackwardRowsShape<64>::ROWS : BackwardRowsShape<128>::ROWS),
                tiled_threads<BackwardRowsShape>(d), TK::backward_rows(d), q.data(), k.data(),
                v.data(), dout.data(), stats.data(), dq.data(), first, len, cos, sin, rows, h,
                kvh, scale);
            host_launch_blocks(
                tiled_grid(rows, h,
                           d64 ? BackwardKeysShape<64>::KEYS : BackwardKeysShape<128>::KEYS),
                tiled_threads<BackwardKeysShape>(d), TK::backward_keys(d), q.data(), k.data(),
                v.data(), dout.data(), stats.data(), dk.data(), dv.data(), first, len, cos, sin,
                rows, h, kvh, scale);
        }
    }
    if (!tiled) {
        // Forward, then backward (which loads q, k and v again, as the op's backward does).
        auto qf = load(q, h, 1), kf = load(k, kvh, 1), vf = load(v, kvh, 0);
        host_launch(blocks_for(size_t(rows) * h), BLOCK, K::forward(d), qf.data(), kf.data(),
                    vf.data(), out.data(), first, len, rows, h, kvh, scale);
        qf = load(q, h, 1), kf = load(k, kvh, 1), vf = load(v, kvh, 0);
        host_launch(blocks_for(size_t(rows) * h), BLOCK, K::backward_rows(d), qf.data(),
                    kf.data(), vf.data(), dout.data(), stats.data(), dq.data(), first, len,
                    rows, h, kvh, scale);
        const uint32_t parts = d == 64 ? KeyColumns<64>::PARTS : KeyColumns<128>::PARTS;
        host_launch(blocks_for(size_t(rows) * h * parts), BLOCK, K::backward_keys(d),
                    qf.data(), kf.data(), vf.data(), dout.data(), stats.data(), dk.data(),
                    dv.data(), first, len, rows, h, kvh, scale);
    }
    const uint32_t width = (h + 2 * kvh) * d;
    std::vector<T> grads(size_t(rows) * width);
    auto store_grad = [&](const std::vector<float> &g, uint32_t heads, uint32_t group,
                          uint32_t col0, uint32_t rotate) {
        host_launch(blocks_for(size_t(rows) * heads * d / 2), BLOCK, K::store_grad, g.data(),
                    grads.data(), first, len, cos, sin, rows, heads, group, d, width, col0,
                    rotate);
    };
    store_grad(dq, h, 1, 0, 1);
    store_grad(dk, kvh, h / kvh, h * d, 1);
    store_grad(dv, kvh, h / kvh, (h + kvh) * d, 0);

    for (const auto *x : {&out, &grads}) {
        for (const T &e : *x) {
            const float f = to_f32(e);
            std::fwrite(&f, 4, 1, out_file);
        }
    }
}

static void read_exact(FILE *f, void *dst, size_t bytes) {
    if (std::fread(dst, 1, bytes, f) != bytes) {
        std::fprintf(stderr, "causal_attention: input is short\n");
        std::exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: causal_attention IN OUT\n");
        return 2;
    }
    FILE *in = std::fopen(argv[1], "rb");
    FILE *out = std::fopen(argv[2], "wb");
    if (!in || !out) {
        std::fprintf(stderr, "causal_attention: cannot open %s or %s\n", argv[1], argv[2]);
        return 1;
    }
    uint32_t header[8];
    read_exact(in, header, sizeof header);
    Problem p;
    p.rows = header[0], p.heads = header[1], p.kv_heads = header[2], p.d = header[3];
    p.positions = header[4];
    const uint32_t dtype = header[5];
    const bool tiled = header[6] != 0;
    if (tiled && dtype == 0) {
        std::fprintf(stderr, "causal_attention: the tiled kernels take bf16 or f16, not f32\n");
        return 1;
    }
    if (p.d != 64 && p.d != 128) {
        std::fprintf(stderr, "causal_attention: head size %u has no kernel\n", p.d);
        return 1;
    }
    p.first.assign(p.rows, 0);
    p.len.assign(p.rows, 0);
    for (uint32_t s = 0; s < header[7]; ++s) {
        uint32_t seg[2];
        read_exact(in, seg, sizeof seg);
        for (uint32_t r = seg[0]; r < seg[0] + seg[1]; ++r) p.first[r] = seg[0], p.len[r] = seg[1];
    }
    auto floats = [&](std::vector<float> &x, size_t n) {
        x.resize(n);
        read_exact(in, x.data(), n * 4);
    };
    floats(p.q, size_t(p.rows) * p.heads * p.d);
    floats(p.k, size_t(p.rows) * p.kv_heads * p.d);
    floats(p.v, size_t(p.rows) * p.kv_heads * p.d);
    floats(p.dout, size_t(p.rows) * p.heads * p.d);
    floats(p.cos, size_t(p.positions) * p.d / 2);
    floats(p.sin, size_t(p.positions) * p.d / 2);
    switch (dtype) {
        case 0: run<float>(p, tiled, out); break;
        case 1: run<__nv_bfloat16>(p, tiled, out); break;
        case 2: run<__half>(p, tiled, out); break;
        default: std::fprintf(stderr, "causal_attention: unknown dtype %u\n", dtype); return 1;
    }
    std::fclose(out);
    return 0;
}

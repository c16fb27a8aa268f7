// Runs kernels/int8_projection.cu on the host with the launches of
// src/model/ops/int8_projection_cuda.rs (same grids, Int8Tiles::THREADS threads a block,
// each block's threads as std::threads), for tests/int8_kernel_host.rs. Usage:
// int8_projection IN OUT.
//
// IN (little-endian): u32 rows, out, in, dtype (0 f32, 1 bf16, 2 f16); i8 q [out, in];
// f32 scales [out, in / 32]; f32 x [rows, in]; f32 dy [rows, out]. x and dy are rounded to
// the dtype on reading and the kernels run on it.
// OUT: f32 y [rows, out], then f32 dx [rows, in] (the kernels' results in the dtype, as
// f32). Each result buffer is followed by a guard region the kernels must leave alone.

#include "../../kernels/int8_projection.cu"

#include <cstdio>
#include <cstdlib>
#include <vector>

static const size_t GUARD = 4096;

template <typename T>
struct Kernels;

#define KERNELS(T, NAME)                                                    \
    template <>                                                             \
    struct Kernels<T> {                                                     \
        static constexpr auto forward = int8_projection_forward_##NAME;     \
        static constexpr auto input_grad = int8_projection_input_grad_##NAME; \
    };
KERNELS(float, f32)
KERNELS(__nv_bfloat16, bf16)
KERNELS(__half, f16)

template <typename T>
static std::vector<T> converted(const std::vector<float> &x) {
    std::vector<T> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) store(&out[i], x[i]);
    return out;
}

static uint32_t tiles(uint32_t n, uint32_t tile) { return (n + tile - 1) / tile; }

// A result buffer of `n` elements and a guard, every element set to a value the kernels
// never write (NaN), so unwritten results and writes past the end both show.
template <typename T>
static std::vector<T> result_buffer(size_t n) {
    std::vector<T> out(n + GUARD);
    for (T &e : out) store(&e, NAN);
    return out;
}

template <typename T>
static void write_checked(const std::vector<T> &x, size_t n, const char *what, FILE *out) {
    for (size_t i = n; i < x.size(); ++i) {
        if (!std::isnan(to_f32(x[i]))) {
            std::fprintf(stderr, "int8_projection: %s written past its end at %zu\n", what, i);
            std::exit(1);
        }
    }
    for (size_t i = 0; i < n; ++i) {
        const float f = to_f32(x[i]);
        if (std::isnan(f)) {
            std::fprintf(stderr, "int8_projection: %s element %zu not written\n", what, i);
            std::exit(1);
        }
        std::fwrite(&f, 4, 1, out);
    }
}

template <typename T>
static void run(uint32_t rows, uint32_t out, uint32_t in, const std::vector<int8_t> &q,
                const std::vector<float> &scales, const std::vector<float> &xf,
                const std::vector<float> &dyf, FILE *out_file) {
    const auto x = converted<T>(xf), dy = converted<T>(dyf);
    auto y = result_buffer<T>(size_t(rows) * out), dx = result_buffer<T>(size_t(rows) * in);
    const uint32_t threads = Int8Tiles::THREADS;
    host_launch_blocks({tiles(out, Int8Tiles::N), tiles(rows, Int8Tiles::M)}, threads,
                       Kernels<T>::forward, x.data(), q.data(), scales.data(), y.data(), rows,
                       out, in);
    host_launch_blocks({tiles(in, Int8Tiles::N), tiles(rows, Int8Tiles::M)}, threads,
                       Kernels<T>::input_grad, dy.data(), q.data(), scales.data(), dx.data(),
                       rows, out, in);
    write_checked(y, size_t(rows) * out, "y", out_file);
    write_checked(dx, size_t(rows) * in, "dx", out_file);
}

static void read_exact(FILE *f, void *dst, size_t bytes) {
    if (std::fread(dst, 1, bytes, f) != bytes) {
        std::fprintf(stderr, "int8_projection: input is short\n");
        std::exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: int8_projection IN OUT\n");
        return 2;
    }
    FILE *in_file = std::fopen(argv[1], "rb");
    FILE *out_file = std::fopen(argv[2], "wb");
    if (!in_file || !out_file) {
        std::fprintf(stderr, "int8_projection: cannot open %s or %s\n", argv[1], argv[2]);
        return 1;
    }
    uint32_t header[4];
    read_exact(in_file, header, sizeof header);
    const uint32_t rows = header[0], out = header[1], in = header[2], dtype = header[3];
    if (in % Int8Tiles::QUANT_BLOCK != 0) {
        std::fprintf(stderr, "int8_projection: in = %u is not a multiple of 32\n", in);
        return 1;
    }
    std::vector<int8_t> q(size_t(out) * in);
    std::vector<float> scales(size_t(out) * in / 32), x(size_t(rows) * in), dy(size_t(rows) * out);
    read_exact(in_file, q.data(), q.size());
    read_exact(in_file, scales.data(), scales.size() * 4);
    read_exact(in_file, x.data(), x.size() * 4);
    read_exact(in_file, dy.data(), dy.size() * 4);
    switch (dtype) {
        case 0: run<float>(rows, out, in, q, scales, x, dy, out_file); break;
        case 1: run<__nv_bfloat16>(rows, out, in, q, scales, x, dy, out_file); break;
        case 2: run<__half>(rows, out, in, q, scales, x, dy, out_file); break;
        default: std::fprintf(stderr, "int8_projection: unknown dtype %u\n", dtype); return 1;
    }
    std::fclose(out_file);
    return 0;
}

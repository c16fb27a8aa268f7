// Fused causal attention with rotary positions, forward and backward, for the GPU
// training path. src/model/ops/causal_attention.rs defines the op (and is its CPU twin);
// src/model/ops/causal_attention_cuda.rs launches these kernels in this order:
//
//   forward:  attention_load (q, k rotated; v) -> attention_forward
//   backward: attention_load (q, k, v) -> attention_backward_rows (dq, row statistics)
//             -> attention_backward_keys (dk, dv) -> attention_store_grad (dq, dk, dv)
//
// Nothing of size [heads, t, t] is ever stored: like FlashAttention, each query row keeps
// an online softmax and the backward pass recomputes the probabilities. Unlike it, these
// kernels use no tensor cores and no shared memory: one thread owns one (row, head) and
// keeps its head_dim-wide sums in registers (at most 128 floats, so that ptxas spills
// none: it reads its own q, k, v and dout rows from memory at each step, and the key-side
// kernel splits the columns of dk and dv over threads). Threads of a warp are consecutive
// rows of one head, so at each step of their loops they all read the same key (or query)
// row. bf16 and f16 on sm_80 and up run on flash_attention.cu's tensor-core kernels
// instead; these remain the f32 kernels and the reference the tests compare those with.
// Every kernel is also compiled for the host (AUTOIF_HOST_EMULATION, see
// host_emulation.h), where tests run it thread by thread against the CPU twin.
//
// Layout: q, dq [rows, heads, D]; k, v [rows, kv_heads, D]; dk and dv before their sum
// [rows, heads, D] (query head h's part is at h, KV head h / group's), row-major. Row r
// belongs to the sequence starting at row first[r] with len[r] rows (its position is
// r - first[r]); len[r] == 0 marks a row outside every sequence, whose outputs are zero.
// cos/sin are [positions, D/2] f32. All arithmetic is f32.

#include "elements.cuh"

// a . b over D components, in f32.
template <int D, typename A, typename B>
__device__ __forceinline__ float dot(const A *a, const B *b) {
    float sum = 0.0f;
#ifndef AUTOIF_HOST_EMULATION
// 16 products at a time: unrolled all the way, ptxas loads both rows into registers
// first and spills at head size 64.
#pragma unroll 16
#endif
    for (int c = 0; c < D; ++c) sum += to_f32(a[c]) * to_f32(b[c]);
    return sum;
}

__device__ __forceinline__ uint32_t thread_index() {
    return blockIdx.x * blockDim.x + threadIdx.x;
}

// One thread per (row, head, i < D/2): x converted to f32, and for q and k rotated to
// the row's position (Hugging Face's two halves: (a, b) -> (a cos - b sin, b cos + a sin)).
template <typename T>
__device__ void load(const T *x, float *out, const uint32_t *first, const uint32_t *len,
                     const float *cos, const float *sin, uint32_t rows, uint32_t heads,
                     uint32_t d, uint32_t rotate) {
    const uint32_t half = d / 2;
    const uint32_t g = thread_index();
    if (g >= rows * heads * half) return;
    const uint32_t row = g / (heads * half);
    const uint32_t head = g / half % heads;
    const uint32_t i = g % half;
    const size_t at = ((size_t)row * heads + head) * d + i;
    if (len[row] == 0) {
        out[at] = 0.0f;
        out[at + half] = 0.0f;
        return;
    }
    const float a = to_f32(x[at]), b = to_f32(x[at + half]);
    if (!rotate) {
        out[at] = a;
        out[at + half] = b;
        return;
    }
    const size_t t = (size_t)(row - first[row]) * half + i;
    out[at] = a * cos[t] - b * sin[t];
    out[at + half] = b * cos[t] + a * sin[t];
}

// One thread per (row, head): out = softmax(scale q k^T over keys first..=row) v.
template <typename T, int D>
__device__ void forward(const float *q, const float *k, const float *v, T *out,
                        const uint32_t *first, const uint32_t *len, uint32_t rows,
                        uint32_t heads, uint32_t kv_heads, float scale) {
    const uint32_t g = thread_index();
    if (g >= rows * heads) return;
    const uint32_t head = g / rows, row = g % rows;
    T *o = out + ((size_t)row * heads + head) * D;
    if (len[row] == 0) {
        for (int c = 0; c < D; ++c) store(o + c, 0.0f);
        return;
    }
    const uint32_t kv = head / (heads / kv_heads);
    float acc[D];
    const float *qp = q + ((size_t)row * heads + head) * D;
    for (int c = 0; c < D; ++c) acc[c] = 0.0f;
    float max = -INFINITY, sum = 0.0f;
    for (uint32_t j = first[row]; j <= row; ++j) {
        const float *kp = k + ((size_t)j * kv_heads + kv) * D;
        const float *vp = v + ((size_t)j * kv_heads + kv) * D;
        const float s = scale * dot<D>(qp, kp);
        if (s > max) {
            const float shrink = expf(max - s);
            sum *= shrink;
            for (int c = 0; c < D; ++c) acc[c] *= shrink;
            max = s;
        }
        const float p = expf(s - max);
        sum += p;
        for (int c = 0; c < D; ++c) acc[c] += p * vp[c];
    }
    const float inv = 1.0f / sum;
    for (int c = 0; c < D; ++c) store(o + c, acc[c] * inv);
}

// One thread per (row, head), with p_j = softmax_j(s), dp_j = dout . v_j:
//   stats[row, head] = (log-sum-exp of s, delta = sum_j p_j dp_j)
//   dq = scale sum_j p_j (dp_j - delta) k_j            (rotated frame, f32)
// Two passes over the keys: the statistics (online, rescaled like the forward), then dq.
template <typename T, int D>
__device__ void backward_rows(const float *q, const float *k, const float *v, const T *dout,
                              float *stats, float *dq, const uint32_t *first,
                              const uint32_t *len, uint32_t rows, uint32_t heads,
                              uint32_t kv_heads, float scale) {
    const uint32_t g = thread_index();
    if (g >= rows * heads) return;
    const uint32_t head = g / rows, row = g % rows;
    const size_t at = (size_t)row * heads + head;
    float *dqp = dq + at * D;
    if (len[row] == 0) {
        for (int c = 0; c < D; ++c) dqp[c] = 0.0f;
        stats[2 * at] = 0.0f;
        stats[2 * at + 1] = 0.0f;
        return;
    }
    const uint32_t kv = head / (heads / kv_heads);
    const float *qp = q + at * D;
    const T *gp = dout + at * D;
    float max = -INFINITY, sum = 0.0f, weighted = 0.0f;
    for (uint32_t j = first[row]; j <= row; ++j) {
        const float *kp = k + ((size_t)j * kv_heads + kv) * D;
        const float *vp = v + ((size_t)j * kv_heads + kv) * D;
        const float s = scale * dot<D>(qp, kp), dp = dot<D>(gp, vp);
        if (s > max) {
            const float shrink = expf(max - s);
            sum *= shrink;
            weighted *= shrink;
            max = s;
        }
        const float e = expf(s - max);
        sum += e;
        weighted += e * dp;
    }
    const float lse = max + logf(sum);
    const float delta = weighted / sum;
    float acc[D];
    for (int c = 0; c < D; ++c) acc[c] = 0.0f;
    for (uint32_t j = first[row]; j <= row; ++j) {
        const float *kp = k + ((size_t)j * kv_heads + kv) * D;
        const float *vp = v + ((size_t)j * kv_heads + kv) * D;
        const float s = scale * dot<D>(qp, kp), dp = dot<D>(gp, vp);
        const float ds = expf(s - lse) * (dp - delta);
        for (int c = 0; c < D; ++c) acc[c] += ds * kp[c];
    }
    for (int c = 0; c < D; ++c) dqp[c] = scale * acc[c];
    stats[2 * at] = lse;
    stats[2 * at + 1] = delta;
}

// Columns of dk and dv one thread of backward_keys sums: all of them at head size 64,
// half at 128 (two sums of 128 floats would not fit in the 255 registers).
template <int D>
struct KeyColumns {
    static constexpr int WIDTH = D < 64 ? D : 64;
    static constexpr int PARTS = D / WIDTH;
};

// One thread per (key row, query head, part of the columns: KeyColumns), over the rows
// i = last..=row of its sequence (descending, so a warp's threads read the same query row
// together and drop out one by one); the query heads sharing a KV head each write their
// own part, which attention_store_grad adds up:
//   dv = sum p_ij dout_i;  dk = scale sum p_ij (dp_ij - delta_i) q_i   (rotated frame)
template <typename T, int D>
__device__ void backward_keys(const float *q, const float *k, const float *v, const T *dout,
                              const float *stats, float *dk, float *dv,
                              const uint32_t *first, const uint32_t *len, uint32_t rows,
                              uint32_t heads, uint32_t kv_heads, float scale) {
    constexpr int WIDTH = KeyColumns<D>::WIDTH;
    const uint32_t g = thread_index();
    if (g >= rows * heads * KeyColumns<D>::PARTS) return;
    const uint32_t c0 = g / (rows * heads) * WIDTH;
    const uint32_t head = g % (rows * heads) / rows, row = g % rows;
    float *dkp = dk + ((size_t)row * heads + head) * D + c0;
    float *dvp = dv + ((size_t)row * heads + head) * D + c0;
    if (len[row] == 0) {
        for (int c = 0; c < WIDTH; ++c) {
            dkp[c] = 0.0f;
            dvp[c] = 0.0f;
        }
        return;
    }
    const size_t at = (size_t)row * kv_heads + head / (heads / kv_heads);
    const float *kp = k + at * D, *vp = v + at * D;
    float dkr[WIDTH], dvr[WIDTH];
    for (int c = 0; c < WIDTH; ++c) {
        dkr[c] = 0.0f;
        dvr[c] = 0.0f;
    }
    const uint32_t last = first[row] + len[row] - 1;
    for (uint32_t i = last + 1; i-- > row;) {
        const size_t qi = (size_t)i * heads + head;
        const float *qp = q + qi * D;
        const T *gp = dout + qi * D;
        const float s = scale * dot<D>(qp, kp), dp = dot<D>(gp, vp);
        const float p = expf(s - stats[2 * qi]);
        const float ds = p * (dp - stats[2 * qi + 1]);
        for (int c = 0; c < WIDTH; ++c) {
            dvr[c] += p * to_f32(gp[c0 + c]);
            dkr[c] += ds * qp[c0 + c];
        }
    }
    for (int c = 0; c < WIDTH; ++c) {
        dkp[c] = scale * dkr[c];
        dvp[c] = dvr[c];
    }
}

// One thread per (row, head, i < D/2): writes the f32 gradient g [rows, heads·group, D],
// summed over each head's `group` consecutive parts, into columns col0.. of out
// [rows, width] in T, rotated back from the row's position for q and k (a rotation's
// gradient is its inverse).
template <typename T>
__device__ void store_grad(const float *g, T *out, const uint32_t *first, const uint32_t *len,
                           const float *cos, const float *sin, uint32_t rows, uint32_t heads,
                           uint32_t group, uint32_t d, uint32_t width, uint32_t col0,
                           uint32_t rotate) {
    const uint32_t half = d / 2;
    const uint32_t n = thread_index();
    if (n >= rows * heads * half) return;
    const uint32_t row = n / (heads * half);
    const uint32_t head = n / half % heads;
    const uint32_t i = n % half;
    float a = 0.0f, b = 0.0f;
    for (uint32_t part = 0; part < group; ++part) {
        const size_t from = (((size_t)row * heads + head) * group + part) * d + i;
        a += g[from];
        b += g[from + half];
    }
    T *to = out + (size_t)row * width + col0 + head * d + i;
    if (!rotate || len[row] == 0) {
        store(to, a);
        store(to + half, b);
        return;
    }
    const size_t t = (size_t)(row - first[row]) * half + i;
    store(to, a * cos[t] + b * sin[t]);
    store(to + half, b * cos[t] - a * sin[t]);
}

#define ATTENTION_DTYPE(T, NAME)                                                             \
    extern "C" __global__ void attention_load_##NAME(                                        \
        const T *x, float *out, const uint32_t *first, const uint32_t *len, const float *cos, \
        const float *sin, uint32_t rows, uint32_t heads, uint32_t d, uint32_t rotate) {      \
        load<T>(x, out, first, len, cos, sin, rows, heads, d, rotate);                       \
    }                                                                                        \
    extern "C" __global__ void attention_store_grad_##NAME(                                  \
        const float *g, T *out, const uint32_t *first, const uint32_t *len,                  \
        const float *cos, const float *sin, uint32_t rows, uint32_t heads, uint32_t group,   \
        uint32_t d, uint32_t width, uint32_t col0, uint32_t rotate) {                        \
        store_grad<T>(g, out, first, len, cos, sin, rows, heads, group, d, width, col0,      \
                      rotate);                                                               \
    }

#define ATTENTION_HEAD_DIM(T, NAME, D)                                                       \
    extern "C" __global__ void attention_forward_##NAME##_##D(                               \
        const float *q, const float *k, const float *v, T *out, const uint32_t *first,       \
        const uint32_t *len, uint32_t rows, uint32_t heads, uint32_t kv_heads, float scale) { \
        forward<T, D>(q, k, v, out, first, len, rows, heads, kv_heads, scale);               \
    }                                                                                        \
    extern "C" __global__ void attention_backward_rows_##NAME##_##D(                         \
        const float *q, const float *k, const float *v, const T *dout, float *stats,         \
        float *dq, const uint32_t *first, const uint32_t *len, uint32_t rows,                \
        uint32_t heads, uint32_t kv_heads, float scale) {                                    \
        backward_rows<T, D>(q, k, v, dout, stats, dq, first, len, rows, heads, kv_heads,     \
                            scale);                                                          \
    }                                                                                        \
    extern "C" __global__ void attention_backward_keys_##NAME##_##D(                         \
        const float *q, const float *k, const float *v, const T *dout, const float *stats,   \
        float *dk, float *dv, const uint32_t *first, const uint32_t *len, uint32_t rows,     \
        uint32_t heads, uint32_t kv_heads, float scale) {                                    \
        backward_keys<T, D>(q, k, v, dout, stats, dk, dv, first, len, rows, heads, kv_heads, \
                            scale);                                                          \
    }

#define ATTENTION_KERNELS(T, NAME)  \
    ATTENTION_DTYPE(T, NAME)        \
    ATTENTION_HEAD_DIM(T, NAME, 64) \
    ATTENTION_HEAD_DIM(T, NAME, 128)

ATTENTION_KERNELS(float, f32)
ATTENTION_KERNELS(__nv_bfloat16, bf16)
ATTENTION_KERNELS(__half, f16)

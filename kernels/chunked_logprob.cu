// Row statistics and gradients for the chunked target log-probability
// (src/model/ops/chunked_logprob.rs describes the op; src/model/ops/chunked_logprob_cuda.rs
// drives these kernels). The chunk logits themselves come from cuBLAS (GemmEx with f32
// output), so every kernel here reads f32 logits of one vocabulary chunk, row-major
// [rows, chunk].
//
// Statistics per row live in `state` [rows, 3] f32: running max, Σ exp(logit − max), and
// the target's logit once a chunk has held it.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define BLOCK 256

// Block-wide reduction through shared memory; every thread gets the result.
template <typename Op>
__device__ float block_reduce(float v, float *shared, Op op) {
    const int tid = threadIdx.x;
    shared[tid] = v;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (tid < stride) shared[tid] = op(shared[tid], shared[tid + stride]);
        __syncthreads();
    }
    float out = shared[0];
    __syncthreads();
    return out;
}

struct MaxOp {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
    __device__ float operator()(float a, float b) const { return a + b; }
};

// One block per row: fold this chunk's logits into the row's running statistics.
// `first` is nonzero for the first chunk, whose state is not read.
extern "C" __global__ void chunked_logprob_update(
    const float *logits, const uint32_t *targets, float *state, uint32_t chunk,
    uint32_t chunk_start, uint32_t first) {
    __shared__ float shared[BLOCK];
    const uint32_t row = blockIdx.x;
    const float *z = logits + (size_t)row * chunk;

    float local_max = -INFINITY;
    for (uint32_t i = threadIdx.x; i < chunk; i += BLOCK) local_max = fmaxf(local_max, z[i]);
    const float chunk_max = block_reduce(local_max, shared, MaxOp());

    float *s = state + (size_t)row * 3;
    const float old_max = first ? -INFINITY : s[0];
    const float old_sum = first ? 0.0f : s[1];
    const float new_max = fmaxf(old_max, chunk_max);

    float local_sum = 0.0f;
    for (uint32_t i = threadIdx.x; i < chunk; i += BLOCK) local_sum += expf(z[i] - new_max);
    const float chunk_sum = block_reduce(local_sum, shared, SumOp());

    if (threadIdx.x == 0) {
        // expf(-inf) = 0 drops the empty state of the first chunk.
        s[0] = new_max;
        s[1] = old_sum * expf(old_max - new_max) + chunk_sum;
        const uint32_t t = targets[row];
        if (t >= chunk_start && t < chunk_start + chunk) s[2] = z[t - chunk_start];
        else if (first) s[2] = 0.0f;
    }
}

// out [rows, 2] = (target logit − lse, lse) with lse = max + log(sum).
extern "C" __global__ void chunked_logprob_finish(const float *state, float *out, uint32_t rows) {
    const uint32_t row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) return;
    const float *s = state + (size_t)row * 3;
    const float lse = s[0] + logf(s[1]);
    out[2 * row] = s[2] - lse;
    out[2 * row + 1] = lse;
}

// d/dlogits of g_lp·logp + g_lse·lse for one chunk:
//   exp(z − lse)·(g_lse − g_lp) + g_lp·1[v = target],
// `coefs` [rows, 3] = (g_lp, g_lse, lse). The next product (dlogits · W_chunk) runs on the
// tensor cores in the LM head's dtype; for 16-bit heads the gradient is split into a
// rounded part and the rounding's remainder (`hi`, `lo`), two products whose sum keeps
// about 16 bits of the f32 value instead of 8.
template <typename T>
__device__ void chunk_grad(const float *logits, const uint32_t *targets, const float *coefs,
                           T *hi, T *lo, uint32_t rows, uint32_t chunk, uint32_t chunk_start) {
    const size_t total = (size_t)rows * chunk;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const uint32_t row = i / chunk;
        const uint32_t v = chunk_start + (uint32_t)(i % chunk);
        const float *c = coefs + (size_t)row * 3;
        float d = expf(logits[i] - c[2]) * (c[1] - c[0]);
        if (v == targets[row]) d += c[0];
        const T rounded = (T)d;
        hi[i] = rounded;
        if (lo) lo[i] = (T)(d - (float)rounded);
    }
}

extern "C" __global__ void chunked_logprob_grad_f32(const float *logits, const uint32_t *targets,
                                                    const float *coefs, float *dlogits,
                                                    uint32_t rows, uint32_t chunk,
                                                    uint32_t chunk_start) {
    chunk_grad<float>(logits, targets, coefs, dlogits, nullptr, rows, chunk, chunk_start);
}

extern "C" __global__ void chunked_logprob_grad_bf16(const float *logits, const uint32_t *targets,
                                                     const float *coefs, __nv_bfloat16 *hi,
                                                     __nv_bfloat16 *lo, uint32_t rows,
                                                     uint32_t chunk, uint32_t chunk_start) {
    chunk_grad(logits, targets, coefs, hi, lo, rows, chunk, chunk_start);
}

extern "C" __global__ void chunked_logprob_grad_f16(const float *logits, const uint32_t *targets,
                                                    const float *coefs, __half *hi, __half *lo,
                                                    uint32_t rows, uint32_t chunk,
                                                    uint32_t chunk_start) {
    chunk_grad(logits, targets, coefs, hi, lo, rows, chunk, chunk_start);
}

// The frozen base projection of training on an int8 base (`--base-dtype int8`) on the GPU:
// `y = x · Ŵᵀ` forward and `dx = dy · Ŵ` for the backward pass, with
// Ŵ[o][i] = q[o][i] · scale[o][i / 32]: int8 values row-major `[out, in]` and one f32
// scale per 32 inputs `[out, in / 32]` (`in` a multiple of 32; the Q8_0 values and scales
// of `quant::Int8Weight`, laid out row by row for these loads). Activations and results
// are f32, bf16 or f16, products accumulated in f32 and rounded once.
//
// Both are one tiled product C [m, n] = A [m, k] · B [k, n]: A the activations
// (row-major), B read from the int8 weight, B[kk][nn] = Ŵ[nn][kk] forward (m rows,
// n = out, k = in) and Ŵ[kk][nn] for the input gradient (n = in, k = out). A block of
// 256 threads owns a 64 × 64 tile of C; per step of 32 along k it stages the A tile as f32
// and the B tile dequantized to f32 (q · scale, the same f32 product the CPU twin
// `int8_projection` forms, so both multiply by identical Ŵ) in shared memory, then each
// thread adds its 4 × 4 results with fused multiply-adds. Global reads are coalesced: a
// warp reads 32 consecutive activations of one row, and the weight 4 bytes per thread
// along its rows. CPU twin and op: src/model/ops/int8_projection.rs; driver:
// src/model/ops/int8_projection_cuda.rs; tests/kernel_host/int8_projection.cpp runs these
// kernels on the host. Also compiles for the host (AUTOIF_HOST_EMULATION).
#include "elements.cuh"

#ifdef AUTOIF_HOST_EMULATION
#include <cstring>
#endif

// The tiling. A block's threads form a 16 × 16 grid; thread (tx, ty) owns rows
// ty + 16·i and columns tx + 16·j (i, j < 4) of the tile, so a warp's 32 threads read 16
// consecutive B values and two A values per step: no shared-memory bank conflicts.
struct Int8Tiles {
    static constexpr uint32_t M = 64;        // rows of C per block
    static constexpr uint32_t N = 64;        // columns of C per block
    static constexpr uint32_t K = 32;        // k per step: one quantization block forward
    static constexpr uint32_t SIDE = 16;     // threads per tile side
    static constexpr uint32_t THREADS = SIDE * SIDE;
    static constexpr uint32_t PER = M / SIDE;  // results per thread and side
    static constexpr uint32_t QUANT_BLOCK = 32;  // inputs per scale
};

// Four int8 weights at `p`, 4-byte aligned (rows are a multiple of 32 bytes long and
// every read starts at a multiple of 4 inputs), as one little-endian word.
__device__ __forceinline__ uint32_t int8_word(const int8_t *p) {
#ifdef AUTOIF_HOST_EMULATION
    if (reinterpret_cast<uintptr_t>(p) % 4 != 0) host_fail("int8 word read not 4-byte aligned");
    uint32_t word;
    std::memcpy(&word, p, 4);
    return word;
#else
    return *reinterpret_cast<const uint32_t *>(p);
#endif
}

// Byte `j` of `word` as a signed weight.
__device__ __forceinline__ float int8_at(uint32_t word, uint32_t j) {
    return float(int8_t(uint8_t(word >> (8 * j))));
}

// C = A · B as described above; `inputs` is the weight's row length (its `in`).
template <typename T, bool INPUT_GRAD>
__device__ void int8_product(const T *a, const int8_t *q, const float *scales, T *c,
                             uint32_t m, uint32_t n, uint32_t k, uint32_t inputs) {
    using S = Int8Tiles;
    // Transposed A ([k][row]) so a thread's A values of one step are one row here; the
    // extra column spreads the transposing stores (and B's) over all 32 banks.
    __shared__ float a_tile[S::K][S::M + 1];
    __shared__ float b_tile[S::K][S::N + 1];
    const uint32_t t = threadIdx.x, tx = t % S::SIDE, ty = t / S::SIDE;
    const uint32_t row0 = blockIdx.y * S::M, col0 = blockIdx.x * S::N;
    const uint32_t blocks_per_row = inputs / S::QUANT_BLOCK;
    float acc[S::PER][S::PER];
    for (uint32_t i = 0; i < S::PER; ++i) {
        for (uint32_t j = 0; j < S::PER; ++j) acc[i][j] = 0.0f;
    }
    for (uint32_t k0 = 0; k0 < k; k0 += S::K) {
        // A: 64 rows × 32 columns, a warp per row; zeros past the edges.
        for (uint32_t e = t; e < S::M * S::K; e += S::THREADS) {
            const uint32_t r = e / S::K, kk = e % S::K;
            const uint32_t row = row0 + r, col = k0 + kk;
            a_tile[kk][r] = row < m && col < k ? to_f32(a[(size_t)row * k + col]) : 0.0f;
        }
        // B: 32 × 64 weights, 4 consecutive inputs of one weight row per thread.
        for (uint32_t e = t; e < S::K * S::N / 4; e += S::THREADS) {
            if (!INPUT_GRAD) {
                // B[kk][nn] = Ŵ[col0 + nn][k0 + kk]: 64 weight rows of 8 words, one block
                // (k0 is a multiple of 32 and k = in of them).
                const uint32_t nn = e / 8, kk = (e % 8) * 4, o = col0 + nn;
                uint32_t word = 0;
                float scale = 0.0f;
                if (o < n) {
                    word = int8_word(q + (size_t)o * inputs + k0 + kk);
                    scale = scales[(size_t)o * blocks_per_row + k0 / S::QUANT_BLOCK];
                }
                for (uint32_t j = 0; j < 4; ++j) b_tile[kk + j][nn] = int8_at(word, j) * scale;
            } else {
                // B[kk][nn] = Ŵ[k0 + kk][col0 + nn]: 32 weight rows of 16 words; `n` (the
                // weight's `in`) is a multiple of 32, so a word is all in or all out.
                const uint32_t kk = e / 16, nn = (e % 16) * 4, o = k0 + kk, i = col0 + nn;
                uint32_t word = 0;
                float scale = 0.0f;
                if (o < k && i < n) {
                    word = int8_word(q + (size_t)o * inputs + i);
                    scale = scales[(size_t)o * blocks_per_row + i / S::QUANT_BLOCK];
                }
                for (uint32_t j = 0; j < 4; ++j) b_tile[kk][nn + j] = int8_at(word, j) * scale;
            }
        }
        __syncthreads();
        for (uint32_t kk = 0; kk < S::K; ++kk) {
            float av[S::PER], bv[S::PER];
            for (uint32_t i = 0; i < S::PER; ++i) av[i] = a_tile[kk][ty + S::SIDE * i];
            for (uint32_t j = 0; j < S::PER; ++j) bv[j] = b_tile[kk][tx + S::SIDE * j];
            for (uint32_t i = 0; i < S::PER; ++i) {
                for (uint32_t j = 0; j < S::PER; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
            }
        }
        // Every thread is done with this step's tiles before the next step overwrites them.
        __syncthreads();
    }
    for (uint32_t i = 0; i < S::PER; ++i) {
        const uint32_t row = row0 + ty + S::SIDE * i;
        if (row >= m) continue;
        for (uint32_t j = 0; j < S::PER; ++j) {
            const uint32_t col = col0 + tx + S::SIDE * j;
            if (col < n) store(&c[(size_t)row * n + col], acc[i][j]);
        }
    }
}

// Launched on a grid of (ceil(out / 64), ceil(rows / 64)) blocks forward and
// (ceil(in / 64), ceil(rows / 64)) for the input gradient, Int8Tiles::THREADS threads each.
#define INT8_PROJECTION(T, NAME)                                                            \
    extern "C" __global__ void __launch_bounds__(Int8Tiles::THREADS)                        \
        int8_projection_forward_##NAME(const T *x, const int8_t *q, const float *scales,    \
                                       T *y, uint32_t rows, uint32_t out, uint32_t in) {    \
        int8_product<T, false>(x, q, scales, y, rows, out, in, in);                         \
    }                                                                                       \
    extern "C" __global__ void __launch_bounds__(Int8Tiles::THREADS)                        \
        int8_projection_input_grad_##NAME(const T *dy, const int8_t *q,                     \
                                          const float *scales, T *dx, uint32_t rows,        \
                                          uint32_t out, uint32_t in) {                      \
        int8_product<T, true>(dy, q, scales, dx, rows, in, out, in);                        \
    }

INT8_PROJECTION(float, f32)
INT8_PROJECTION(__nv_bfloat16, bf16)
INT8_PROJECTION(__half, f16)

// Causal attention with rotary positions on tensor cores, FlashAttention-2 style, for
// bf16 and f16 inputs (f32 inputs keep causal_attention.cu). Same op, layouts and
// sequence convention as causal_attention.cu (src/model/ops/causal_attention.rs is the
// CPU twin; src/model/ops/causal_attention_cuda.rs launches these kernels):
//
//   forward: flash_attention_forward (q, k, v as the projections wrote them) -> out
//
// q [rows, heads, D]; k, v [rows, kv_heads, D], row-major, in T. Row r belongs to the
// sequence starting at row first[r] with len[r] rows (position r - first[r]); len[r] == 0
// marks a row outside every sequence, whose output is zero. Query head h reads KV head
// h / (heads / kv_heads). cos/sin are [positions, D/2] f32.
//
// A block owns ForwardShape::ROWS consecutive query rows of one head, a warp 16 of them.
// The block walks the keys its rows can see in tiles of KEYS rows, staged in shared
// memory (k rotated to its positions and rounded to T, v as it is); each warp computes
// its 16 × KEYS scores with wmma (16×16×16, f32 accumulation), stores them to shared
// memory, and there keeps an online softmax per row (running maximum and sum, as
// causal_attention.cu's forward does per thread); the probabilities, rounded to T, go
// through wmma again against the v tile into an f32 output tile in shared memory, which
// each tile first rescales by its row's correction. Nothing depends on how a fragment's
// elements are spread over the lanes, so host_emulation.h can run the kernel.
//
// Arithmetic against the CPU twin (f32 throughout): q and k are rotated in f32 and then
// rounded to T, and the probabilities are rounded to T before the product with v (their
// sum, the softmax denominator, adds the rounded values); products are exact and sums f32.

#include "elements.cuh"
#ifndef AUTOIF_HOST_EMULATION
#include <mma.h>
#endif

namespace wmma = nvcuda::wmma;

// Tile sizes for head size D, chosen so that ForwardTiles fits the 48 KiB of static
// shared memory a block gets without opting in to more.
template <int D>
struct ForwardShape {
    static constexpr int WARPS = D == 64 ? 4 : 2;
    static constexpr int THREADS = 32 * WARPS;
    static constexpr int ROWS = 16 * WARPS;  // query rows per block
    static constexpr int KEYS = 32;          // key rows per tile
};

// One block's shared memory. Every wmma tile starts at a multiple of 32 bytes.
template <typename T, int D>
struct ForwardTiles {
    using Shape = ForwardShape<D>;
    static constexpr int WARPS = Shape::WARPS, KEYS = Shape::KEYS;
    alignas(32) T k[KEYS][D];                // keys of the tile, rotated
    alignas(32) T v[KEYS][D];                // values of the tile
    alignas(32) T q[WARPS][16][D];           // each warp's queries, rotated (staging)
    alignas(32) float s[WARPS][16][KEYS];    // q k^T of the tile, unscaled
    alignas(32) T p[WARPS][16][KEYS];        // softmax numerators of the tile
    alignas(32) float o[WARPS][16][D];       // running sum of p v
    float max[WARPS][16];                    // running maximum of scale·s per row
    float sum[WARPS][16];                    // running sum of the numerators per row
    float rescale[WARPS][16];                // this tile's correction of o and sum
};

// Writes row `row`'s pair (i, i + D/2) of x (a [rows, width·D] matrix, head `head`) to
// to[i], to[i + D/2] in T: rotated to the row's position (Hugging Face's two halves, as
// causal_attention.cu's load), or as it is when `rotate` is false; zeros for a row
// outside every sequence or past the end.
template <typename T, int D>
__device__ __forceinline__ void stage_pair(const T *x, T *to, uint32_t row, uint32_t i,
                                           uint32_t width, uint32_t head,
                                           const uint32_t *first, const uint32_t *len,
                                           const float *cos, const float *sin,
                                           uint32_t rows, bool rotate) {
    constexpr uint32_t half = D / 2;
    if (row >= rows || len[row] == 0) {
        store(to + i, 0.0f);
        store(to + i + half, 0.0f);
        return;
    }
    const T *from = x + ((size_t)row * width + head) * D;
    if (!rotate) {
        to[i] = from[i];
        to[i + half] = from[i + half];
        return;
    }
    const float a = to_f32(from[i]), b = to_f32(from[i + half]);
    const size_t t = (size_t)(row - first[row]) * half + i;
    store(to + i, a * cos[t] - b * sin[t]);
    store(to + i + half, b * cos[t] + a * sin[t]);
}

// The keys rows [begin, begin + count) can see: [lo, end), empty (lo >= end) when none of
// them is inside a sequence. Rows of a sequence are consecutive, so the first row inside
// one gives lo and the last gives end.
__device__ __forceinline__ void visible_keys(const uint32_t *first, const uint32_t *len,
                                             uint32_t begin, uint32_t count, uint32_t rows,
                                             uint32_t &lo, uint32_t &end) {
    const uint32_t stop = begin + count < rows ? begin + count : rows;
    lo = 0;
    end = 0;
    for (uint32_t r = begin; r < stop; ++r) {
        if (len[r] != 0) {
            lo = first[r];
            break;
        }
    }
    for (uint32_t r = stop; r-- > begin;) {
        if (len[r] != 0) {
            end = r + 1;
            break;
        }
    }
}

// Grid (ceil(rows / ROWS), heads), ForwardShape<D>::THREADS threads per block:
// out = softmax(scale q k^T over keys first..=row) v, per (row, head).
template <typename T, int D>
__device__ void tiled_forward(const T *q, const T *k, const T *v, T *out,
                              const uint32_t *first, const uint32_t *len, const float *cos,
                              const float *sin, uint32_t rows, uint32_t heads,
                              uint32_t kv_heads, float scale) {
    using Shape = ForwardShape<D>;
    constexpr int KEYS = Shape::KEYS, THREADS = Shape::THREADS;
    __shared__ ForwardTiles<T, D> tiles;
    static_assert(sizeof(ForwardTiles<T, D>) <= 48 * 1024, "over 48 KiB of shared memory");

    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t head = blockIdx.y, kv = head / (heads / kv_heads);
    const uint32_t block_row0 = blockIdx.x * Shape::ROWS, row0 = block_row0 + warp * 16;
    uint32_t block_lo, block_end, warp_lo, warp_end;
    visible_keys(first, len, block_row0, Shape::ROWS, rows, block_lo, block_end);
    visible_keys(first, len, row0, 16, rows, warp_lo, warp_end);

    // This warp's queries, rotated, into fragments for the whole walk over the keys.
    for (uint32_t e = lane; e < 16 * D / 2; e += 32) {
        stage_pair<T, D>(q, tiles.q[warp][e / (D / 2)], row0 + e / (D / 2), e % (D / 2),
                         heads, head, first, len, cos, sin, rows, true);
    }
    for (uint32_t e = lane; e < 16 * D; e += 32) tiles.o[warp][e / D][e % D] = 0.0f;
    if (lane < 16) {
        tiles.max[warp][lane] = -INFINITY;
        tiles.sum[warp][lane] = 0.0f;
    }
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qf[D / 16];
    for (int c = 0; c < D / 16; ++c) wmma::load_matrix_sync(qf[c], &tiles.q[warp][0][c * 16], D);

    for (uint32_t j0 = block_lo; j0 < block_end; j0 += KEYS) {
        __syncthreads();  // every warp is done with the previous tile
        for (uint32_t e = threadIdx.x; e < KEYS * D / 2; e += THREADS) {
            const uint32_t r = e / (D / 2), i = e % (D / 2);
            stage_pair<T, D>(k, tiles.k[r], j0 + r, i, kv_heads, kv, first, len, cos, sin,
                             rows, true);
            stage_pair<T, D>(v, tiles.v[r], j0 + r, i, kv_heads, kv, first, len, cos, sin,
                             rows, false);
        }
        __syncthreads();
        if (j0 >= warp_end || j0 + KEYS <= warp_lo) continue;  // the same for the whole warp

        // s = q k^T: k^T is the k tile read column-major.
        for (int n = 0; n < KEYS / 16; ++n) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int c = 0; c < D / 16; ++c) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf;
                wmma::load_matrix_sync(kf, &tiles.k[n * 16][c * 16], D);
                wmma::mma_sync(acc, qf[c], kf, acc);
            }
            wmma::store_matrix_sync(&tiles.s[warp][0][n * 16], acc, KEYS, wmma::mem_row_major);
        }
        __syncwarp();

        // Online softmax, one lane per row: raise the maximum, rescale, add this tile.
        if (lane < 16) {
            const uint32_t row = row0 + lane;
            const bool inside = row < rows && len[row] != 0;
            const uint32_t lo = inside ? first[row] : 0;
            const float *s = tiles.s[warp][lane];
            const float old = tiles.max[warp][lane];
            float max = old;
            for (int c = 0; c < KEYS; ++c) {
                const uint32_t j = j0 + c;
                if (inside && j >= lo && j <= row) max = fmaxf(max, scale * s[c]);
            }
            // exp(-inf - finite) = 0 drops nothing: the sum and o are still zero then.
            const float rescale = max == -INFINITY ? 1.0f : expf(old - max);
            float sum = tiles.sum[warp][lane] * rescale;
            for (int c = 0; c < KEYS; ++c) {
                const uint32_t j = j0 + c;
                const bool seen = inside && j >= lo && j <= row;
                T *p = &tiles.p[warp][lane][c];
                store(p, seen ? expf(scale * s[c] - max) : 0.0f);
                sum += to_f32(*p);
            }
            tiles.max[warp][lane] = max;
            tiles.sum[warp][lane] = sum;
            tiles.rescale[warp][lane] = rescale;
        }
        __syncwarp();
        for (uint32_t e = lane; e < 16 * D; e += 32) {
            tiles.o[warp][e / D][e % D] *= tiles.rescale[warp][e / D];
        }
        __syncwarp();

        // o += p v.
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pf[KEYS / 16];
        for (int n = 0; n < KEYS / 16; ++n) {
            wmma::load_matrix_sync(pf[n], &tiles.p[warp][0][n * 16], KEYS);
        }
        for (int c = 0; c < D / 16; ++c) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, &tiles.o[warp][0][c * 16], D, wmma::mem_row_major);
            for (int n = 0; n < KEYS / 16; ++n) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vf;
                wmma::load_matrix_sync(vf, &tiles.v[n * 16][c * 16], D);
                wmma::mma_sync(acc, pf[n], vf, acc);
            }
            wmma::store_matrix_sync(&tiles.o[warp][0][c * 16], acc, D, wmma::mem_row_major);
        }
        __syncwarp();
    }

    __syncwarp();
    for (uint32_t e = lane; e < 16 * D; e += 32) {
        const uint32_t r = e / D, c = e % D, row = row0 + r;
        if (row >= rows) continue;
        const float value = len[row] != 0 ? tiles.o[warp][r][c] / tiles.sum[warp][r] : 0.0f;
        store(out + ((size_t)row * heads + head) * D + c, value);
    }
}

#define FLASH_ATTENTION(T, NAME, D)                                                          \
    extern "C" __global__ void __launch_bounds__(ForwardShape<D>::THREADS)                   \
        flash_attention_forward_##NAME##_##D(                                                \
        const T *q, const T *k, const T *v, T *out, const uint32_t *first,                   \
        const uint32_t *len, const float *cos, const float *sin, uint32_t rows,              \
        uint32_t heads, uint32_t kv_heads, float scale) {                                    \
        tiled_forward<T, D>(q, k, v, out, first, len, cos, sin, rows, heads, kv_heads,       \
                            scale);                                                          \
    }

// wmma has f16 fragments from sm_70 and bf16 ones from sm_80; below that the driver keeps
// causal_attention.cu (Element::TILED_FROM in causal_attention_cuda.rs).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
FLASH_ATTENTION(__nv_bfloat16, bf16, 64)
FLASH_ATTENTION(__nv_bfloat16, bf16, 128)
#endif
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
FLASH_ATTENTION(__half, f16, 64)
FLASH_ATTENTION(__half, f16, 128)
#endif

// Causal attention with rotary positions on tensor cores, FlashAttention-2 style, for
// bf16 and f16 inputs (f32 inputs keep causal_attention.cu). Same op, layouts and
// sequence convention as causal_attention.cu (src/model/ops/causal_attention.rs is the
// CPU twin; src/model/ops/causal_attention_cuda.rs launches these kernels):
//
//   forward:  flash_attention_forward (q, k, v as the projections wrote them) -> out
//   backward: flash_attention_backward_rows (stats, dq) -> flash_attention_backward_keys
//             (dk, dv per query head) -> causal_attention.cu's attention_store_grad
//
// q, dout [rows, heads, D]; k, v [rows, kv_heads, D], row-major, in T; the backward's
// outputs are f32 in the rotated frame, laid out as causal_attention.cu's. Row r belongs to the
// sequence starting at row first[r] with len[r] rows (position r - first[r]); len[r] == 0
// marks a row outside every sequence, whose output is zero. Query head h reads KV head
// h / (heads / kv_heads). cos/sin are [positions, D/2] f32.
//
// The forward: a block owns ForwardShape::ROWS consecutive query rows of one head, a warp
// 16 of them.
// The block walks the keys its rows can see in tiles of KEYS rows, staged in shared
// memory (k rotated to its positions and rounded to T, v as it is); each warp computes
// its 16 × KEYS scores with wmma (16×16×16, f32 accumulation), stores them to shared
// memory, and there keeps an online softmax per row (running maximum and sum, as
// causal_attention.cu's forward does per thread); the probabilities, rounded to T, go
// through wmma again against the v tile into an f32 output tile in shared memory, which
// each tile first rescales by its row's correction. The backward kernels (below) work the
// same way. Nothing depends on how a fragment's elements are spread over the lanes, so
// host_emulation.h can run the kernels.
//
// Arithmetic against the CPU twin (f32 throughout): q and k are rotated in f32 and then
// rounded to T, and the probabilities (and in the backward p (dp - delta)) are rounded to
// T before the products that take them (the forward's softmax denominator adds the
// rounded values); products are exact and sums f32.

#include "elements.cuh"
#ifndef AUTOIF_HOST_EMULATION
#include <mma.h>
#endif
#include <assert.h>

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
    // The launch must match the shape (causal_attention_cuda.rs's Tiled::warps).
    assert(blockDim.x == Shape::THREADS);

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

// The query rows that can see keys [begin, begin + count): [lo, end), empty when none of
// them is inside a sequence (each key row j is seen by rows j..first[j] + len[j]).
__device__ __forceinline__ void seeing_rows(const uint32_t *first, const uint32_t *len,
                                            uint32_t begin, uint32_t count, uint32_t rows,
                                            uint32_t &lo, uint32_t &end) {
    const uint32_t stop = begin + count < rows ? begin + count : rows;
    lo = 0;
    end = 0;
    for (uint32_t r = begin; r < stop; ++r) {
        if (len[r] != 0) {
            lo = r;
            break;
        }
    }
    for (uint32_t r = stop; r-- > begin;) {
        if (len[r] != 0) {
            end = first[r] + len[r];
            break;
        }
    }
}

// Tile sizes of flash_attention_backward_rows for head size D (48 KiB, as the forward).
template <int D>
struct BackwardRowsShape {
    static constexpr int WARPS = D == 64 ? 4 : 2;
    static constexpr int THREADS = 32 * WARPS;
    static constexpr int ROWS = 16 * WARPS;  // query rows per block
    static constexpr int KEYS = 32;          // key rows per tile
};

// One warp's part of flash_attention_backward_rows's shared memory: its queries and
// output gradients are staged, loaded into fragments and then make room for dq.
template <typename T, int D, int KEYS>
struct BackwardRowsWarp {
    struct Staged {
        alignas(32) T q[16][D];     // queries, rotated
        alignas(32) T dout[16][D];  // output gradient
    };
    union {
        Staged staged;
        alignas(32) float dq[16][D];  // running sum of ds k
    };
    alignas(32) float s[16][KEYS];   // q k^T of the tile, unscaled
    alignas(32) float dp[16][KEYS];  // dout v^T of the tile
    alignas(32) T ds[16][KEYS];      // p (dp - delta) of the tile
    float max[16], sum[16], weighted[16];  // online statistics (first pass)
    float lse[16], delta[16];              // their result (second pass)
};

template <typename T, int D>
struct BackwardRowsTiles {
    using Shape = BackwardRowsShape<D>;
    alignas(32) T k[Shape::KEYS][D];  // keys of the tile, rotated
    alignas(32) T v[Shape::KEYS][D];  // values of the tile
    BackwardRowsWarp<T, D, Shape::KEYS> warps[Shape::WARPS];
};

// Grid (ceil(rows / ROWS), heads), BackwardRowsShape<D>::THREADS threads per block. Per
// (row, head), with p_j = softmax_j(scale q k_j) and dp_j = dout . v_j, writes what
// causal_attention.cu's attention_backward_rows writes:
//   stats[row, head] = (log-sum-exp of scale q k_j, delta = sum_j p_j dp_j)
//   dq = scale sum_j p_j (dp_j - delta) k_j            (rotated frame, f32)
// Two walks over the key tiles, both with s = q k^T and dp = dout v^T on tensor cores:
// the statistics (online, rescaled like the forward), then dq, whose products take
// p (dp - delta) rounded to T.
template <typename T, int D>
__device__ void tiled_backward_rows(const T *q, const T *k, const T *v, const T *dout,
                                    float *stats, float *dq, const uint32_t *first,
                                    const uint32_t *len, const float *cos, const float *sin,
                                    uint32_t rows, uint32_t heads, uint32_t kv_heads,
                                    float scale) {
    using Shape = BackwardRowsShape<D>;
    constexpr int KEYS = Shape::KEYS, THREADS = Shape::THREADS;
    __shared__ BackwardRowsTiles<T, D> tiles;
    static_assert(sizeof(BackwardRowsTiles<T, D>) <= 48 * 1024, "over 48 KiB of shared memory");
    // The launch must match the shape (causal_attention_cuda.rs's Tiled::warps).
    assert(blockDim.x == Shape::THREADS);

    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t head = blockIdx.y, kv = head / (heads / kv_heads);
    const uint32_t block_row0 = blockIdx.x * Shape::ROWS, row0 = block_row0 + warp * 16;
    uint32_t block_lo, block_end, warp_lo, warp_end;
    visible_keys(first, len, block_row0, Shape::ROWS, rows, block_lo, block_end);
    visible_keys(first, len, row0, 16, rows, warp_lo, warp_end);
    BackwardRowsWarp<T, D, KEYS> &w = tiles.warps[warp];

    for (uint32_t e = lane; e < 16 * D / 2; e += 32) {
        const uint32_t r = e / (D / 2), i = e % (D / 2);
        stage_pair<T, D>(q, w.staged.q[r], row0 + r, i, heads, head, first, len, cos, sin,
                         rows, true);
        stage_pair<T, D>(dout, w.staged.dout[r], row0 + r, i, heads, head, first, len, cos,
                         sin, rows, false);
    }
    if (lane < 16) {
        w.max[lane] = -INFINITY;
        w.sum[lane] = 0.0f;
        w.weighted[lane] = 0.0f;
    }
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qf[D / 16], gf[D / 16];
    for (int c = 0; c < D / 16; ++c) {
        wmma::load_matrix_sync(qf[c], &w.staged.q[0][c * 16], D);
        wmma::load_matrix_sync(gf[c], &w.staged.dout[0][c * 16], D);
    }
    __syncwarp();  // the staging is dq from here on
    for (uint32_t e = lane; e < 16 * D; e += 32) w.dq[e / D][e % D] = 0.0f;

    for (int pass = 0; pass < 2; ++pass) {
        for (uint32_t j0 = block_lo; j0 < block_end; j0 += KEYS) {
            __syncthreads();  // every warp is done with the previous tile
            for (uint32_t e = threadIdx.x; e < KEYS * D / 2; e += THREADS) {
                const uint32_t r = e / (D / 2), i = e % (D / 2);
                stage_pair<T, D>(k, tiles.k[r], j0 + r, i, kv_heads, kv, first, len, cos,
                                 sin, rows, true);
                stage_pair<T, D>(v, tiles.v[r], j0 + r, i, kv_heads, kv, first, len, cos,
                                 sin, rows, false);
            }
            __syncthreads();
            if (j0 >= warp_end || j0 + KEYS <= warp_lo) continue;  // the same for the warp

            // s = q k^T and dp = dout v^T: k^T and v^T are the tiles read column-major.
            for (int n = 0; n < KEYS / 16; ++n) {
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> sa, pa;
                wmma::fill_fragment(sa, 0.0f);
                wmma::fill_fragment(pa, 0.0f);
                for (int c = 0; c < D / 16; ++c) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
                    wmma::load_matrix_sync(b, &tiles.k[n * 16][c * 16], D);
                    wmma::mma_sync(sa, qf[c], b, sa);
                    wmma::load_matrix_sync(b, &tiles.v[n * 16][c * 16], D);
                    wmma::mma_sync(pa, gf[c], b, pa);
                }
                wmma::store_matrix_sync(&w.s[0][n * 16], sa, KEYS, wmma::mem_row_major);
                wmma::store_matrix_sync(&w.dp[0][n * 16], pa, KEYS, wmma::mem_row_major);
            }
            __syncwarp();

            if (pass == 0) {
                // Online statistics, one lane per row.
                if (lane < 16) {
                    const uint32_t row = row0 + lane;
                    const bool inside = row < rows && len[row] != 0;
                    const uint32_t lo = inside ? first[row] : 0;
                    const float old = w.max[lane];
                    float max = old;
                    for (int c = 0; c < KEYS; ++c) {
                        const uint32_t j = j0 + c;
                        if (inside && j >= lo && j <= row) max = fmaxf(max, scale * w.s[lane][c]);
                    }
                    const float rescale = max == -INFINITY ? 1.0f : expf(old - max);
                    float sum = w.sum[lane] * rescale, weighted = w.weighted[lane] * rescale;
                    for (int c = 0; c < KEYS; ++c) {
                        const uint32_t j = j0 + c;
                        if (!(inside && j >= lo && j <= row)) continue;
                        const float e = expf(scale * w.s[lane][c] - max);
                        sum += e;
                        weighted += e * w.dp[lane][c];
                    }
                    w.max[lane] = max;
                    w.sum[lane] = sum;
                    w.weighted[lane] = weighted;
                }
            } else {
                // ds = p (dp - delta), then dq += ds k.
                for (uint32_t e = lane; e < 16 * KEYS; e += 32) {
                    const uint32_t r = e / KEYS, c = e % KEYS, row = row0 + r, j = j0 + c;
                    const bool seen = row < rows && len[row] != 0 && j >= first[row] && j <= row;
                    const float p = seen ? expf(scale * w.s[r][c] - w.lse[r]) : 0.0f;
                    store(&w.ds[r][c], p * (w.dp[r][c] - w.delta[r]));
                }
                __syncwarp();
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> dsf[KEYS / 16];
                for (int n = 0; n < KEYS / 16; ++n) {
                    wmma::load_matrix_sync(dsf[n], &w.ds[0][n * 16], KEYS);
                }
                for (int c = 0; c < D / 16; ++c) {
                    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
                    wmma::load_matrix_sync(acc, &w.dq[0][c * 16], D, wmma::mem_row_major);
                    for (int n = 0; n < KEYS / 16; ++n) {
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> kf;
                        wmma::load_matrix_sync(kf, &tiles.k[n * 16][c * 16], D);
                        wmma::mma_sync(acc, dsf[n], kf, acc);
                    }
                    wmma::store_matrix_sync(&w.dq[0][c * 16], acc, D, wmma::mem_row_major);
                }
            }
            __syncwarp();
        }
        if (pass == 0) {
            __syncwarp();
            if (lane < 16) {
                const bool any = w.sum[lane] > 0.0f;
                w.lse[lane] = any ? w.max[lane] + logf(w.sum[lane]) : 0.0f;
                w.delta[lane] = any ? w.weighted[lane] / w.sum[lane] : 0.0f;
            }
            __syncwarp();
        }
    }

    __syncwarp();
    for (uint32_t e = lane; e < 16 * D; e += 32) {
        const uint32_t r = e / D, c = e % D, row = row0 + r;
        if (row >= rows) continue;
        dq[((size_t)row * heads + head) * D + c] = len[row] != 0 ? scale * w.dq[r][c] : 0.0f;
    }
    if (lane < 16 && row0 + lane < rows) {
        const size_t at = (size_t)(row0 + lane) * heads + head;
        stats[2 * at] = w.lse[lane];
        stats[2 * at + 1] = w.delta[lane];
    }
}

// Tile sizes of flash_attention_backward_keys for head size D (48 KiB, as the forward).
template <int D>
struct BackwardKeysShape {
    static constexpr int WARPS = D == 64 ? 2 : 1;
    static constexpr int THREADS = 32 * WARPS;
    static constexpr int KEYS = 16 * WARPS;  // key rows per block
    static constexpr int QUERIES = 32;       // query rows per tile
};

// One warp's part of flash_attention_backward_keys's shared memory: its keys and values
// are staged, loaded into fragments and then make room for dk and dv.
template <typename T, int D, int QUERIES>
struct BackwardKeysWarp {
    struct Staged {
        alignas(32) T k[16][D];  // keys, rotated
        alignas(32) T v[16][D];  // values
    };
    struct Sums {
        alignas(32) float dk[16][D];  // running sum of ds q
        alignas(32) float dv[16][D];  // running sum of p dout
    };
    union {
        Staged staged;
        Sums sums;
    };
    alignas(32) float s[16][QUERIES];   // k q^T of the tile, unscaled
    alignas(32) float dp[16][QUERIES];  // v dout^T of the tile
    alignas(32) T p[16][QUERIES];       // probabilities of the tile
    alignas(32) T ds[16][QUERIES];      // p (dp - delta) of the tile
};

template <typename T, int D>
struct BackwardKeysTiles {
    using Shape = BackwardKeysShape<D>;
    alignas(32) T q[Shape::QUERIES][D];     // queries of the tile, rotated
    alignas(32) T dout[Shape::QUERIES][D];  // their output gradient
    float lse[Shape::QUERIES], delta[Shape::QUERIES];
    BackwardKeysWarp<T, D, Shape::QUERIES> warps[Shape::WARPS];
};

// Grid (ceil(rows / KEYS), heads), BackwardKeysShape<D>::THREADS threads per block. Per
// (key row, query head), over the query rows i of its sequence from the key on, writes
// what causal_attention.cu's attention_backward_keys writes (that head's part; the query
// heads sharing a KV head are added up by attention_store_grad):
//   dv = sum_i p_ij dout_i;  dk = scale sum_i p_ij (dp_ij - delta_i) q_i   (rotated frame)
// with p_ij = exp(scale q_i k_j - lse_i) from attention_backward_rows's statistics; the
// products take p and p (dp - delta) rounded to T.
template <typename T, int D>
__device__ void tiled_backward_keys(const T *q, const T *k, const T *v, const T *dout,
                                    const float *stats, float *dk, float *dv,
                                    const uint32_t *first, const uint32_t *len,
                                    const float *cos, const float *sin, uint32_t rows,
                                    uint32_t heads, uint32_t kv_heads, float scale) {
    using Shape = BackwardKeysShape<D>;
    constexpr int QUERIES = Shape::QUERIES, THREADS = Shape::THREADS;
    __shared__ BackwardKeysTiles<T, D> tiles;
    static_assert(sizeof(BackwardKeysTiles<T, D>) <= 48 * 1024, "over 48 KiB of shared memory");
    // The launch must match the shape (causal_attention_cuda.rs's Tiled::warps).
    assert(blockDim.x == Shape::THREADS);

    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t head = blockIdx.y, kv = head / (heads / kv_heads);
    const uint32_t block_key0 = blockIdx.x * Shape::KEYS, key0 = block_key0 + warp * 16;
    uint32_t block_lo, block_end, warp_lo, warp_end;
    seeing_rows(first, len, block_key0, Shape::KEYS, rows, block_lo, block_end);
    seeing_rows(first, len, key0, 16, rows, warp_lo, warp_end);
    BackwardKeysWarp<T, D, QUERIES> &w = tiles.warps[warp];

    for (uint32_t e = lane; e < 16 * D / 2; e += 32) {
        const uint32_t r = e / (D / 2), i = e % (D / 2);
        stage_pair<T, D>(k, w.staged.k[r], key0 + r, i, kv_heads, kv, first, len, cos, sin,
                         rows, true);
        stage_pair<T, D>(v, w.staged.v[r], key0 + r, i, kv_heads, kv, first, len, cos, sin,
                         rows, false);
    }
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> kf[D / 16], vf[D / 16];
    for (int c = 0; c < D / 16; ++c) {
        wmma::load_matrix_sync(kf[c], &w.staged.k[0][c * 16], D);
        wmma::load_matrix_sync(vf[c], &w.staged.v[0][c * 16], D);
    }
    __syncwarp();  // the staging is dk and dv from here on
    for (uint32_t e = lane; e < 16 * D; e += 32) {
        w.sums.dk[e / D][e % D] = 0.0f;
        w.sums.dv[e / D][e % D] = 0.0f;
    }

    for (uint32_t i0 = block_lo; i0 < block_end; i0 += QUERIES) {
        __syncthreads();  // every warp is done with the previous tile
        for (uint32_t e = threadIdx.x; e < QUERIES * D / 2; e += THREADS) {
            const uint32_t r = e / (D / 2), i = e % (D / 2);
            stage_pair<T, D>(q, tiles.q[r], i0 + r, i, heads, head, first, len, cos, sin,
                             rows, true);
            stage_pair<T, D>(dout, tiles.dout[r], i0 + r, i, heads, head, first, len, cos,
                             sin, rows, false);
        }
        for (uint32_t r = threadIdx.x; r < QUERIES; r += THREADS) {
            const size_t at = (size_t)(i0 + r) * heads + head;
            tiles.lse[r] = i0 + r < rows ? stats[2 * at] : 0.0f;
            tiles.delta[r] = i0 + r < rows ? stats[2 * at + 1] : 0.0f;
        }
        __syncthreads();
        if (i0 >= warp_end || i0 + QUERIES <= warp_lo) continue;  // the same for the warp

        // s^T = k q^T and dp^T = v dout^T: q^T and dout^T are the tiles read column-major.
        for (int n = 0; n < QUERIES / 16; ++n) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> sa, pa;
            wmma::fill_fragment(sa, 0.0f);
            wmma::fill_fragment(pa, 0.0f);
            for (int c = 0; c < D / 16; ++c) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
                wmma::load_matrix_sync(b, &tiles.q[n * 16][c * 16], D);
                wmma::mma_sync(sa, kf[c], b, sa);
                wmma::load_matrix_sync(b, &tiles.dout[n * 16][c * 16], D);
                wmma::mma_sync(pa, vf[c], b, pa);
            }
            wmma::store_matrix_sync(&w.s[0][n * 16], sa, QUERIES, wmma::mem_row_major);
            wmma::store_matrix_sync(&w.dp[0][n * 16], pa, QUERIES, wmma::mem_row_major);
        }
        __syncwarp();
        for (uint32_t e = lane; e < 16 * QUERIES; e += 32) {
            const uint32_t r = e / QUERIES, c = e % QUERIES, j = key0 + r, i = i0 + c;
            const bool seen = j < rows && len[j] != 0 && i >= j && i < first[j] + len[j];
            const float p = seen ? expf(scale * w.s[r][c] - tiles.lse[c]) : 0.0f;
            store(&w.p[r][c], p);
            store(&w.ds[r][c], p * (w.dp[r][c] - tiles.delta[c]));
        }
        __syncwarp();

        // dv += p dout, dk += ds q.
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pf[QUERIES / 16],
            dsf[QUERIES / 16];
        for (int n = 0; n < QUERIES / 16; ++n) {
            wmma::load_matrix_sync(pf[n], &w.p[0][n * 16], QUERIES);
            wmma::load_matrix_sync(dsf[n], &w.ds[0][n * 16], QUERIES);
        }
        for (int c = 0; c < D / 16; ++c) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, &w.sums.dv[0][c * 16], D, wmma::mem_row_major);
            for (int n = 0; n < QUERIES / 16; ++n) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
                wmma::load_matrix_sync(b, &tiles.dout[n * 16][c * 16], D);
                wmma::mma_sync(acc, pf[n], b, acc);
            }
            wmma::store_matrix_sync(&w.sums.dv[0][c * 16], acc, D, wmma::mem_row_major);
            wmma::load_matrix_sync(acc, &w.sums.dk[0][c * 16], D, wmma::mem_row_major);
            for (int n = 0; n < QUERIES / 16; ++n) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
                wmma::load_matrix_sync(b, &tiles.q[n * 16][c * 16], D);
                wmma::mma_sync(acc, dsf[n], b, acc);
            }
            wmma::store_matrix_sync(&w.sums.dk[0][c * 16], acc, D, wmma::mem_row_major);
        }
        __syncwarp();
    }

    __syncwarp();
    for (uint32_t e = lane; e < 16 * D; e += 32) {
        const uint32_t r = e / D, c = e % D, j = key0 + r;
        if (j >= rows) continue;
        const size_t at = ((size_t)j * heads + head) * D + c;
        const bool inside = len[j] != 0;
        dk[at] = inside ? scale * w.sums.dk[r][c] : 0.0f;
        dv[at] = inside ? w.sums.dv[r][c] : 0.0f;
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
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(BackwardRowsShape<D>::THREADS)              \
        flash_attention_backward_rows_##NAME##_##D(                                          \
            const T *q, const T *k, const T *v, const T *dout, float *stats, float *dq,      \
            const uint32_t *first, const uint32_t *len, const float *cos, const float *sin,  \
            uint32_t rows, uint32_t heads, uint32_t kv_heads, float scale) {                 \
        tiled_backward_rows<T, D>(q, k, v, dout, stats, dq, first, len, cos, sin, rows,      \
                                  heads, kv_heads, scale);                                   \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(BackwardKeysShape<D>::THREADS)              \
        flash_attention_backward_keys_##NAME##_##D(                                          \
            const T *q, const T *k, const T *v, const T *dout, const float *stats,           \
            float *dk, float *dv, const uint32_t *first, const uint32_t *len,                \
            const float *cos, const float *sin, uint32_t rows, uint32_t heads,               \
            uint32_t kv_heads, float scale) {                                                \
        tiled_backward_keys<T, D>(q, k, v, dout, stats, dk, dv, first, len, cos, sin, rows,  \
                                  heads, kv_heads, scale);                                   \
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

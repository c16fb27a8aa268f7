// Just enough of CUDA for this project's kernels to compile as C++ on the host, where a
// test driver runs their launches (tests/kernel_host/). Defines AUTOIF_HOST_EMULATION's
// side of the kernels' #ifdefs: bf16 and f16 as their bits, converted with
// round-to-nearest-even as on the GPU. Two ways to launch:
//
// * host_launch runs a 1-D grid's threads one after another, for kernels whose threads
//   never meet (no shared memory, no barriers).
// * host_launch_blocks runs each block's threads as real std::threads, blocks one after
//   another, for kernels that use __shared__ storage, __syncthreads(), __syncwarp() and
//   nvcuda::wmma (below). __shared__ is `static`: one object per kernel instantiation,
//   which is the block's own because only one block runs at a time (like the GPU, it
//   starts with whatever the previous block left). Barriers are real, so a thread that
//   reads another's shared-memory write without a barrier between them reads a race.
#pragma once

#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct HostDim3 {
    uint32_t x = 0, y = 0, z = 0;
};
inline thread_local HostDim3 threadIdx, blockIdx;
inline HostDim3 blockDim, gridDim;

struct __nv_bfloat16 {
    uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 x) {
    const uint32_t u = uint32_t(x.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) return {uint16_t((u >> 16) | 0x40)};
    u += 0x7fff + ((u >> 16) & 1);
    return {uint16_t(u >> 16)};
}

struct __half {
    uint16_t bits;
};

inline float __half2float(__half x) {
    const uint32_t sign = uint32_t(x.bits & 0x8000) << 16;
    const uint32_t exponent = (x.bits >> 10) & 0x1f;
    const uint32_t mantissa = x.bits & 0x3ff;
    if (exponent == 0) {
        // Zero or subnormal: mantissa · 2^-24.
        const float magnitude = std::ldexp(float(mantissa), -24);
        return sign ? -magnitude : magnitude;
    }
    uint32_t u = sign | (exponent == 31 ? 0x7f800000 | (mantissa << 13)
                                        : ((exponent + 112) << 23) | (mantissa << 13));
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline __half __float2half(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint16_t sign = uint16_t((u >> 16) & 0x8000);
    if (std::isnan(f)) return {uint16_t(sign | 0x7e00)};
    const float magnitude = std::fabs(f);
    if (magnitude >= 65520.0f) return {uint16_t(sign | 0x7c00)};  // rounds to infinity
    if (magnitude < 6.103515625e-05f) {
        // Subnormal: a multiple of 2^-24, rounded to nearest even by nearbyint.
        return {uint16_t(sign | uint16_t(std::nearbyint(magnitude * 16777216.0f)))};
    }
    // Normal: drop 13 mantissa bits with round-to-nearest-even; a carry into the
    // exponent is the correct result.
    uint32_t bits = (u & 0x7fffffff) - (112u << 23);
    bits += 0xfff + ((bits >> 13) & 1);
    return {uint16_t(sign | (bits >> 13))};
}

// Runs `kernel(args...)` for every thread of a 1-D grid of `blocks` × `threads`.
template <typename Kernel, typename... Args>
void host_launch(uint32_t blocks, uint32_t threads, Kernel kernel, Args... args) {
    gridDim.x = blocks;
    blockDim.x = threads;
    for (uint32_t b = 0; b < blocks; ++b) {
        blockIdx.x = b;
        for (uint32_t t = 0; t < threads; ++t) {
            threadIdx.x = t;
            kernel(args...);
        }
    }
}

// What __syncthreads() and __syncwarp() wait at: `count` threads, reusable.
class HostBarrier {
  public:
    explicit HostBarrier(uint32_t count) : count_(count) {}

    void arrive_and_wait() {
        std::unique_lock<std::mutex> lock(mutex_);
        const uint64_t generation = generation_;
        if (++arrived_ == count_) {
            release();
            return;
        }
        cv_.wait(lock, [&] { return generation_ != generation; });
    }

    // A thread that leaves the kernel no longer takes part (as exited threads on the GPU).
    void drop() {
        std::lock_guard<std::mutex> lock(mutex_);
        --count_;
        if (count_ > 0 && arrived_ == count_) release();
    }

  private:
    void release() {
        arrived_ = 0;
        ++generation_;
        cv_.notify_all();
    }

    std::mutex mutex_;
    std::condition_variable cv_;
    uint32_t count_, arrived_ = 0;
    uint64_t generation_ = 0;
};

struct HostBlock {
    HostBarrier block;
    std::vector<std::unique_ptr<HostBarrier>> warps;
};
inline thread_local HostBlock *host_block = nullptr;

inline void host_fail(const char *what) {
    std::fprintf(stderr, "host emulation: %s\n", what);
    std::abort();
}

inline void __syncthreads() {
    if (!host_block) host_fail("__syncthreads() outside host_launch_blocks");
    host_block->block.arrive_and_wait();
}

inline void __syncwarp(uint32_t mask = 0xffffffffu) {
    if (!host_block) host_fail("__syncwarp() outside host_launch_blocks");
    if (mask != 0xffffffffu) host_fail("__syncwarp() with a partial mask");
    host_block->warps[threadIdx.x / 32]->arrive_and_wait();
}

struct HostGrid {
    uint32_t x, y;
};

// Runs `kernel(args...)` for every thread of a `grid` (x, y) of blocks of `threads`
// threads (a multiple of the warp size), each block's threads as std::threads.
template <typename Kernel, typename... Args>
void host_launch_blocks(HostGrid grid, uint32_t threads, Kernel kernel, Args... args) {
    if (threads == 0 || threads % 32 != 0) host_fail("block size is not a multiple of 32");
    gridDim = {grid.x, grid.y, 1};
    blockDim = {threads, 1, 1};
    for (uint32_t by = 0; by < grid.y; ++by) {
        for (uint32_t bx = 0; bx < grid.x; ++bx) {
            HostBlock block{HostBarrier(threads), {}};
            for (uint32_t w = 0; w < threads / 32; ++w) {
                block.warps.push_back(std::make_unique<HostBarrier>(32));
            }
            std::vector<std::thread> pool;
            for (uint32_t t = 0; t < threads; ++t) {
                pool.emplace_back([&, t] {
                    host_block = &block;
                    blockIdx = {bx, by, 0};
                    threadIdx = {t, 0, 0};
                    kernel(args...);
                    block.block.drop();
                    block.warps[t / 32]->drop();
                    host_block = nullptr;
                });
            }
            for (auto &thread : pool) thread.join();
        }
    }
}

// nvcuda::wmma for 16×16×16 tiles. A fragment holds its whole tile in every lane (the
// GPU spreads it over the warp's lanes in an undocumented layout, which kernels that
// only load, store, fill and multiply fragments never see). Loads read the tile; a
// store writes each element from one lane only (element e from lane e % 32), so, as on
// the GPU, lanes see each other's stored elements only after __syncwarp(). Products of
// bf16 or f16 inputs are exact in f32 and are accumulated in f32, in k order. Pointers
// must be 256-bit aligned and strides multiples of 16 bytes, as the GPU requires.
namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "only 16x16x16 fragments are emulated");
    static constexpr int num_elements = 256;
    T x[256];  // (row, column) at row * 16 + column
};

template <typename T>
inline void check_tile(const T *p, unsigned ldm) {
    if (reinterpret_cast<uintptr_t>(p) % 32 != 0) host_fail("wmma pointer not 256-bit aligned");
    if ((ldm * sizeof(T)) % 16 != 0) host_fail("wmma stride not a multiple of 16 bytes");
}

template <typename Use, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout> &f, const T *p, unsigned ldm) {
    check_tile(p, ldm);
    constexpr bool rows = std::is_same<Layout, row_major>::value;
    for (int r = 0; r < 16; ++r) {
        for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = rows ? p[r * ldm + c] : p[c * ldm + r];
    }
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p,
                             unsigned ldm, layout_t layout) {
    check_tile(p, ldm);
    for (int r = 0; r < 16; ++r) {
        for (int c = 0; c < 16; ++c) {
            f.x[r * 16 + c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
        }
    }
}

inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f,
                              unsigned ldm, layout_t layout) {
    check_tile(p, ldm);
    for (int e = int(threadIdx.x % 32); e < 256; e += 32) {
        const int r = e / 16, c = e % 16;
        (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[e];
    }
}

template <typename Use, typename T, typename Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout> &f, T value) {
    for (T &x : f.x) x = value;
}

inline float wmma_f32(float x) { return x; }
inline float wmma_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
inline float wmma_f32(__half x) { return __half2float(x); }

template <typename T, typename LayoutA, typename LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                     const fragment<matrix_a, 16, 16, 16, T, LayoutA> &a,
                     const fragment<matrix_b, 16, 16, 16, T, LayoutB> &b,
                     const fragment<accumulator, 16, 16, 16, float> &c) {
    float fa[256], fb[256], out[256];
    for (int e = 0; e < 256; ++e) {
        fa[e] = wmma_f32(a.x[e]);
        fb[e] = wmma_f32(b.x[e]);
    }
    for (int r = 0; r < 16; ++r) {
        for (int n = 0; n < 16; ++n) {
            float sum = c.x[r * 16 + n];
            for (int k = 0; k < 16; ++k) sum += fa[r * 16 + k] * fb[k * 16 + n];
            out[r * 16 + n] = sum;
        }
    }
    std::memcpy(d.x, out, sizeof out);
}

}  // namespace wmma
}  // namespace nvcuda

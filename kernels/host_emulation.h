// Just enough of CUDA for kernels that use neither shared memory nor warp intrinsics to
// compile as C++ on the host, where a test driver runs each launch's threads one after
// another (tests/kernel_host/). Defines AUTOIF_HOST_EMULATION's side of the kernels'
// #ifdefs: no f16; bf16 as its bits with round-to-nearest-even conversion, as on the GPU.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __forceinline__ inline

struct HostDim3 {
    uint32_t x = 0, y = 0, z = 0;
};
inline HostDim3 threadIdx, blockIdx, blockDim, gridDim;

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

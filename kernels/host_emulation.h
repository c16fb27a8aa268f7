// Just enough of CUDA for kernels that use neither shared memory nor warp intrinsics to
// compile as C++ on the host, where a test driver runs each launch's threads one after
// another (tests/kernel_host/). Defines AUTOIF_HOST_EMULATION's side of the kernels'
// #ifdefs: bf16 and f16 as their bits, converted with round-to-nearest-even as on the GPU.
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

// Element types shared by the attention kernels: f32, bf16 and f16 loaded as f32 and
// stored from f32 with round-to-nearest-even. Also compiles for the host
// (AUTOIF_HOST_EMULATION, see host_emulation.h).
#pragma once

#ifdef AUTOIF_HOST_EMULATION
#include "host_emulation.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif
#include <stdint.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ void store(float *p, float x) { *p = x; }
__device__ __forceinline__ void store(__nv_bfloat16 *p, float x) { *p = __float2bfloat16(x); }
__device__ __forceinline__ void store(__half *p, float x) { *p = __float2half(x); }

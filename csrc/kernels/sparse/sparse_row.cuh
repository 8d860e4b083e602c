// What one lane holds of a gathered row, and the reductions over the lanes that share the row.
//
// Gathered rows (keys, values, queries) are read by "row groups" of 8 lanes: lane s of a group
// holds elements [c * 64 + s * 8, c * 64 + s * 8 + 8) for c < D / 64, so each 16-byte load
// instruction of a group covers 128 contiguous bytes of the row: one L2 line, no wasted sectors.
// A warp has 4 groups, so it works on 4 different rows at a time.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include <cutlass/numeric_types.h>

namespace attnx::sparse {

constexpr int kGroupLanes = 8;
constexpr int kGroups = 32 / kGroupLanes;
constexpr float kLog2e = 1.4426950408889634f;

template <class Elem>
struct Packed;  // two 16-bit elements in a 32-bit word <-> float2
template <>
struct Packed<cutlass::half_t> {
  __device__ static float2 to_float2(uint32_t w) { return __half22float2(*reinterpret_cast<const __half2*>(&w)); }
  __device__ static uint32_t from_float2(float2 f) {
    __half2 h = __float22half2_rn(f);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};
template <>
struct Packed<cutlass::bfloat16_t> {
  __device__ static float2 to_float2(uint32_t w) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w));
  }
  __device__ static uint32_t from_float2(float2 f) {
    __nv_bfloat162 h = __float22bfloat162_rn(f);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

// A lane's share of one D-wide 16-bit row, as loaded (raw) or widened (float).
template <class Elem, int D>
struct RowSlice {
  static_assert(D % 64 == 0, "rows are read in 128-byte lines by groups of 8 lanes");
  static constexpr int kVecs = D / 64;  // 16-byte vectors per lane
  static constexpr int kElems = kVecs * 8;
  uint4 raw[kVecs];

  // Read-only gathers: through the non-coherent path, not kept in L1 (rows are rarely re-read by
  // the same SM soon enough to hit).
  __device__ __forceinline__ void load(const Elem* row, int sub) {
#pragma unroll
    for (int c = 0; c < kVecs; ++c) {
      const uint4* src = reinterpret_cast<const uint4*>(row + c * 64 + sub * 8);
      asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                   : "=r"(raw[c].x), "=r"(raw[c].y), "=r"(raw[c].z), "=r"(raw[c].w)
                   : "l"(src));
    }
  }
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int c = 0; c < kVecs; ++c) raw[c] = make_uint4(0, 0, 0, 0);
  }
  // f(e, x) for the lane's element pairs: x holds elements e and e + 1 of the slice.
  template <class F>
  __device__ __forceinline__ void each_pair(F&& f) const {
#pragma unroll
    for (int c = 0; c < kVecs; ++c) {
      const uint32_t w[4] = {raw[c].x, raw[c].y, raw[c].z, raw[c].w};
#pragma unroll
      for (int e = 0; e < 4; ++e) f(c * 8 + 2 * e, Packed<Elem>::to_float2(w[e]));
    }
  }
  __device__ __forceinline__ void widen(float (&f)[kElems], float mul = 1.f) const {
    each_pair([&](int e, float2 x) { f[e] = x.x * mul, f[e + 1] = x.y * mul; });
  }
  // this . f, over the lane's elements only (group_sum completes it).
  __device__ __forceinline__ float dot(const float (&f)[kElems]) const {
    float acc = 0.f;
    each_pair([&](int e, float2 x) { acc = fmaf(x.y, f[e + 1], fmaf(x.x, f[e], acc)); });
    return acc;
  }
  // acc += a * this
  __device__ __forceinline__ void axpy(float a, float (&acc)[kElems]) const {
    each_pair([&](int e, float2 x) { acc[e] = fmaf(a, x.x, acc[e]), acc[e + 1] = fmaf(a, x.y, acc[e + 1]); });
  }
};

// Stores a lane's kElems floats (times mul) to its slice of a 16-bit row.
template <class Elem, int D>
__device__ __forceinline__ void store_row_slice(Elem* row, int sub, const float (&f)[RowSlice<Elem, D>::kElems],
                                                float mul) {
#pragma unroll
  for (int c = 0; c < RowSlice<Elem, D>::kVecs; ++c) {
    uint4 o;
    o.x = Packed<Elem>::from_float2(make_float2(f[c * 8 + 0] * mul, f[c * 8 + 1] * mul));
    o.y = Packed<Elem>::from_float2(make_float2(f[c * 8 + 2] * mul, f[c * 8 + 3] * mul));
    o.z = Packed<Elem>::from_float2(make_float2(f[c * 8 + 4] * mul, f[c * 8 + 5] * mul));
    o.w = Packed<Elem>::from_float2(make_float2(f[c * 8 + 6] * mul, f[c * 8 + 7] * mul));
    *reinterpret_cast<uint4*>(row + c * 64 + sub * 8) = o;
  }
}

// Sum over the 8 lanes of a row group (every lane of the warp must call it).
__device__ __forceinline__ float group_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  x += __shfl_xor_sync(0xffffffffu, x, 4);
  return x;
}

__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Sums a per-group array over the warp's 4 groups, the same fixed order in every lane (so every
// group ends with the same, deterministic total).
template <int N>
__device__ __forceinline__ void sum_over_groups(float (&a)[N]) {
#pragma unroll
  for (int off = kGroupLanes; off < 32; off *= 2)
#pragma unroll
    for (int e = 0; e < N; ++e) a[e] += __shfl_xor_sync(0xffffffffu, a[e], off);
}

}  // namespace attnx::sparse

// Online softmax over KV tiles, on accumulators seen as (rows, cols).
//
// Exponentials are taken in base 2 with the scale folded in (one FFMA per score). Each row is
// shared by the 4 threads of a quad (lanes differing in their two low bits), so row maxima are
// reduced with two shuffles per tile; row sums stay per-thread partials until the end, which is
// exact because every partial of a row is rescaled by the same factor.
// A row that has seen no visible key keeps max = -inf: its exponentials, sum and output are 0 and
// its lse is -inf (no NaN from -inf - -inf).
#pragma once

#include <cute/tensor.hpp>

namespace attnx::fmha {

// 2^x on the MUFU with subnormal results flushed to zero. Plain exp2f (without fast-math) adds
// range fix-ups around MUFU.EX2 to produce subnormals, which a softmax weight below 2^-126 never
// needs; the exponentials are the softmax's bottleneck, so those instructions count.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  return x + __shfl_xor_sync(0xffffffff, x, 2);
}

template <int kRows>
struct OnlineSoftmax {
  static constexpr int kNumRows = kRows;
  float row_max[kRows];
  float row_sum[kRows];
  float scale_log2;  // softmax scale * log2(e)

  __device__ explicit OnlineSoftmax(float scale) : scale_log2(scale * 1.4426950408889634f) {
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kRows; ++i) row_max[i] = -INFINITY, row_sum[i] = 0.f;
  }

  // Replaces the scores s_rc by exp(scale * (s - new_max)) and updates max and sum; row_scale
  // receives the factor the rows' earlier output must be multiplied by.
  template <bool kFirst, class TensorS>
  __device__ __forceinline__ void update(TensorS& s_rc, float (&row_scale)[kRows]) {
    static_assert(decltype(cute::size<0>(s_rc))::value == kRows);
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      float m = row_max[mi];
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < cute::size<1>(s_rc); ++ni) m = fmaxf(m, s_rc(mi, ni));
      m = quad_max(m);
      const float m_scaled = m == -INFINITY ? 0.f : m * scale_log2;
      // (old - new) never overflows; an old max of -inf means nothing accumulated yet.
      row_scale[mi] = kFirst || row_max[mi] == -INFINITY ? 0.f : exp2_ftz((row_max[mi] - m) * scale_log2);
      float sum = 0.f;
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < cute::size<1>(s_rc); ++ni) {
        const float p = exp2_ftz(s_rc(mi, ni) * scale_log2 - m_scaled);
        s_rc(mi, ni) = p;
        sum += p;
      }
      row_sum[mi] = row_sum[mi] * row_scale[mi] + sum;
      row_max[mi] = m;
    }
  }

  template <class TensorO>
  __device__ __forceinline__ void rescale(TensorO& o_rc, const float (&row_scale)[kRows]) const {
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < kRows; ++mi)
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < cute::size<1>(o_rc); ++ni) o_rc(mi, ni) *= row_scale[mi];
  }

  // Final normalisation factors 1 / sum (0 for an empty row) and lse (natural log, -inf when empty).
  __device__ __forceinline__ void finalize(float (&inv_sum)[kRows], float (&lse)[kRows]) const {
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      const float sum = quad_sum(row_sum[mi]);
      const bool empty = sum == 0.f;  // NaN inputs stay NaN
      inv_sum[mi] = empty ? 0.f : 1.f / sum;
      lse[mi] = empty ? -INFINITY : row_max[mi] * (scale_log2 * 0.6931471805599453f) + __logf(sum);
    }
  }
};

}  // namespace attnx::fmha

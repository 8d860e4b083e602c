// Online softmax over KV tiles (flash attention), in the log2 domain.
//
// Each thread holds two rows (g and g + 8 of its warp's 16) and, per row, a quarter of the
// columns; the 4 threads of a quad share a row, so row reductions are two xor-shuffles. The
// row sum stays a per-thread partial until the epilogue. Rows that have seen no key keep
// max = -inf; exponentials then use 0 as their base so no NaN (-inf - -inf) ever appears.
#pragma once

#include <cmath>

namespace attnx::fmha {

template <int kNTilesS, int kNTilesO>
struct OnlineSoftmax {
  float row_max[2];  // running max of scale * log2(e) * s, per row
  float row_sum[2];  // this thread's partial sum of exp2(x - row_max)

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_max[r] = -INFINITY;
      row_sum[r] = 0.f;
    }
  }

  __device__ static __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
  }
  __device__ static __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffff, x, 1);
    return x + __shfl_xor_sync(0xffffffff, x, 2);
  }

  // s: scores of this KV tile times scale * log2(e), masked entries -inf; overwritten by
  // p = exp2(s - new_max). acc_o is rescaled by exp2(old_max - new_max).
  __device__ __forceinline__ void update(float (&s)[kNTilesS][4], float (&acc_o)[kNTilesO][4]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float m = row_max[r];
#pragma unroll
      for (int j = 0; j < kNTilesS; ++j) m = fmaxf(m, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      m = quad_max(m);
      const float base = m == -INFINITY ? 0.f : m;
      const float correction = exp2f(row_max[r] - base);  // 0 on the first tile (old max -inf)
      row_max[r] = m;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < kNTilesS; ++j) {
#pragma unroll
        for (int e = 2 * r; e < 2 * r + 2; ++e) {
          s[j][e] = exp2f(s[j][e] - base);
          sum += s[j][e];
        }
      }
      row_sum[r] = row_sum[r] * correction + sum;
#pragma unroll
      for (int d = 0; d < kNTilesO; ++d) {
        acc_o[d][2 * r] *= correction;
        acc_o[d][2 * r + 1] *= correction;
      }
    }
  }

  // Final normalisation: returns 1 / l per row (0 for an empty row) and writes the natural-log lse.
  __device__ __forceinline__ void finalize(float (&inv_l)[2], float (&lse)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float l = quad_sum(row_sum[r]);
      const bool empty = l == 0.f || row_max[r] == -INFINITY;
      inv_l[r] = empty ? 0.f : 1.f / l;
      lse[r] = empty ? -INFINITY : row_max[r] * float(M_LN2) + logf(l);
    }
  }
};

}  // namespace attnx::fmha

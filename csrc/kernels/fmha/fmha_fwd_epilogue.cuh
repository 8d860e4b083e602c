// Epilogue: normalise the O accumulator, convert to 16 bits and store O and lse.
#pragma once

#include "fmha_params.h"

namespace attnx::fmha {

// rows: global query indices of this thread's two rows; rows >= seqlen_q are not stored.
template <typename Traits>
__device__ __forceinline__ void store_output(const float (&acc_o)[Traits::kNTilesO][4], const float (&inv_l)[2],
                                             const float (&lse)[2], typename Traits::Element* o_head,
                                             int64_t o_row_stride, float* lse_head, int64_t lse_row_stride,
                                             const int (&rows)[2], int seqlen_q, int lane) {
  using Ops = typename Traits::Ops;
  const int t = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (rows[r] >= seqlen_q) continue;
    auto* o_row = o_head + (int64_t)rows[r] * o_row_stride;
#pragma unroll
    for (int d = 0; d < Traits::kNTilesO; ++d) {
      *reinterpret_cast<uint32_t*>(o_row + d * 8 + 2 * t) =
          Ops::pack(acc_o[d][2 * r] * inv_l[r], acc_o[d][2 * r + 1] * inv_l[r]);
    }
    if (t == 0) lse_head[(int64_t)rows[r] * lse_row_stride] = lse[r];
  }
}

}  // namespace attnx::fmha

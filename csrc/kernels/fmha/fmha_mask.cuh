// The dense iteration space: which KV tiles a Q tile visits and which elements are masked.
//
// Keys at or past seqlen_k are out of range; with causal masking (bottom-right aligned) key j
// is visible to query i iff j <= i + (seqlen_k - seqlen_q). Other families (NA, block-sparse,
// varlen) replace this struct: the mainloop only asks for the visited tile range and applies
// the element mask on tiles that need one.
#pragma once

#include <cmath>

namespace attnx::fmha {

template <int kBlockM, int kBlockN>
struct DenseCausalMask {
  int seqlen_q, seqlen_k;
  bool causal;

  // One past the last KV tile the Q tile starting at m0 visits (0 = none).
  __device__ __forceinline__ int n_block_end(int m0) const {
    int end = seqlen_k;
    if (causal) end = min(end, m0 + kBlockM + seqlen_k - seqlen_q);
    return end > 0 ? (end + kBlockN - 1) / kBlockN : 0;
  }

  // Does the KV tile at n0 need element masking for the Q tile at m0?
  __device__ __forceinline__ bool needs_mask(int m0, int n0) const {
    return n0 + kBlockN > seqlen_k || (causal && n0 + kBlockN - 1 > m0 + seqlen_k - seqlen_q);
  }

  // s: this thread's scores of the tile (accumulator layout); rows: its two global query rows.
  template <int kNTilesS>
  __device__ __forceinline__ void apply(float (&s)[kNTilesS][4], const int (&rows)[2], int n0, int lane) const {
    const int t = lane & 3;
#pragma unroll
    for (int j = 0; j < kNTilesS; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = n0 + j * 8 + 2 * t + (e & 1);
        const int row = rows[e >> 1];
        const bool visible = col < seqlen_k && (!causal || col <= row + seqlen_k - seqlen_q);
        if (!visible) s[j][e] = -INFINITY;
      }
    }
  }
};

}  // namespace attnx::fmha

// Iteration space of dense and packed attention: which KV tiles a Q tile visits and which
// elements inside a visited tile are masked. Other families (neighborhood, block-sparse) plug in
// their own type with the same three members.
//
// Key j is visible to query i (positions within the sequence) when
//   j < seqlen_k  and  i + offset - left <= j <= i + offset + right,  offset = seqlen_k - seqlen_q,
// with an unbounded side stored as a large bound. Causal is right = 0.
#pragma once

#include <cute/tensor.hpp>

namespace attnx::fmha {

template <int kBlockM, int kBlockN>
struct WindowMask {
  int seqlen_q, seqlen_k;
  int left, right;  // >= 0; kUnbounded when the side is open
  static constexpr int kUnbounded = 1 << 30;

  __device__ WindowMask(int seqlen_q_, int seqlen_k_, int window_left, int window_right, bool causal)
      : seqlen_q(seqlen_q_), seqlen_k(seqlen_k_) {
    left = window_left < 0 ? kUnbounded : window_left;
    right = window_right < 0 ? kUnbounded : window_right;
    if (causal) right = 0;
  }

  // [n_min, n_max): the KV tiles that hold a key visible to some row of Q tile m_block.
  __device__ void n_block_range(int m_block, int& n_min, int& n_max) const {
    const int offset = seqlen_k - seqlen_q;
    n_max = (seqlen_k + kBlockN - 1) / kBlockN;
    n_min = 0;
    if (right < kUnbounded) {
      const long long last = (long long)(m_block + 1) * kBlockM - 1 + offset + right;  // last visible key
      const long long limit = last < 0 ? 0 : (last + 1 + kBlockN - 1) / kBlockN;
      if (limit < n_max) n_max = (int)limit;
    }
    if (left < kUnbounded) {
      const long long first = (long long)m_block * kBlockM + offset - left;
      if (first > 0) n_min = (int)(first / kBlockN);
    }
  }

  // [m_min, m_max): the Q tiles with a row that sees some key of KV tile n_block (backward).
  __device__ void m_block_range(int n_block, int& m_min, int& m_max) const {
    const int offset = seqlen_k - seqlen_q;
    m_max = (seqlen_q + kBlockM - 1) / kBlockM;
    m_min = 0;
    if (left < kUnbounded) {
      const long long last = (long long)(n_block + 1) * kBlockN - 1 + left - offset;  // last row seeing the tile
      const long long limit = last < 0 ? 0 : last / kBlockM + 1;
      if (limit < m_max) m_max = (int)limit;
    }
    if (right < kUnbounded) {
      const long long first = (long long)n_block * kBlockN - offset - right;  // first row seeing the tile
      if (first > 0) m_min = (int)min(first / kBlockM, (long long)m_max);
    }
  }

  // Whether tile n_block of Q tile m_block has any invisible (row < seqlen_q, key) pair that the
  // element mask must remove; tiles strictly inside the band skip the per-element work.
  __device__ bool tile_needs_mask(int m_block, int n_block) const {
    const int offset = seqlen_k - seqlen_q;
    const long long k_first = (long long)n_block * kBlockN, k_last = k_first + kBlockN - 1;
    const long long q_first = (long long)m_block * kBlockM, q_last = q_first + kBlockM - 1;
    if (k_last >= seqlen_k) return true;
    if (right < kUnbounded && k_last > q_first + offset + right) return true;
    if (left < kUnbounded && k_first < q_last + offset - left) return true;
    return false;
  }

  // s_rc: scores as (rows, cols); coord_rc: their (row, col) within the (kBlockM, kBlockN) tile.
  template <class TensorS, class TensorC>
  __device__ void apply(TensorS& s_rc, TensorC const& coord_rc, int m_block, int n_block) const {
    const int offset = seqlen_k - seqlen_q;
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < cute::size<0>(s_rc); ++mi) {
      const long long i = (long long)m_block * kBlockM + cute::get<0>(coord_rc(mi, 0));
      const int hi = (int)max(-1LL, min((long long)seqlen_k - 1, i + offset + right));
      const int lo = (int)max(0LL, min((long long)seqlen_k, i + offset - left));
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < cute::size<1>(s_rc); ++ni) {
        const int j = n_block * kBlockN + cute::get<1>(coord_rc(0, ni));
        if (j > hi || j < lo) s_rc(mi, ni) = -INFINITY;
      }
    }
  }

  // The same on transposed scores (rows = keys, cols = queries), as the backward holds them.
  template <class TensorS, class TensorC>
  __device__ void apply_transposed(TensorS& st_rc, TensorC const& coord_rc, int m_block, int n_block) const {
    const int offset = seqlen_k - seqlen_q;
    CUTLASS_PRAGMA_UNROLL
    for (int ni = 0; ni < cute::size<0>(st_rc); ++ni) {
      const int j = n_block * kBlockN + cute::get<0>(coord_rc(ni, 0));
      CUTLASS_PRAGMA_UNROLL
      for (int mi = 0; mi < cute::size<1>(st_rc); ++mi) {
        const long long i = (long long)m_block * kBlockM + cute::get<1>(coord_rc(0, mi));
        if (j >= seqlen_k || j > i + offset + right || j < i + offset - left) st_rc(ni, mi) = -INFINITY;
      }
    }
  }
};

}  // namespace attnx::fmha

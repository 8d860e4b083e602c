// Epilogue of one piece: combine the two warpgroups' row sums, normalise O, and write either the
// final output (a sequence with one piece) or a float partial result and its lse into the piece's
// split slot (merged later by mla_combine_kernel).
#pragma once

#include <cute/tensor.hpp>

#include "mla_decode_mainloop.cuh"

namespace attnx::mla {

using namespace cute;

template <class Traits, class TensorO>
__device__ void mla_decode_store(const MlaDecodeParams& p, typename Traits::SharedStorage& ss, TensorO& tOrO,
                                 const MlaSoftmax& softmax, const MlaPiece& piece, int head_k, int m_block,
                                 int mma_tid) {
  using Element = typename Traits::Element;
  constexpr int kHalfV = Traits::kHalfV;
  const int wg = mma_tid / 128, tid = mma_tid % 128;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_pv = mma_pv.get_thread_slice(tid);
  Tensor tOcO = thr_pv.partition_C(make_identity_tensor(Shape<_64, Int<kHalfV>>{}));
  Tensor c_rc = make_tensor(tOcO.data(), fmha::accumulator_rowcol(tOcO.layout()));
  Tensor o_rc = make_tensor(tOrO.data(), fmha::accumulator_rowcol(tOrO.layout()));

  // An empty piece has nothing to exchange (and must not: without a mainloop between two
  // epilogues, its writes could overtake the other warpgroup's reads of the previous sums).
  const bool has_keys = piece.token_end > piece.token_begin;
  if (has_keys) {
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < 2; ++mi) {
      const float sum = quad_sum(softmax.row_sum[mi]);
      if (tid % 4 == 0) ss.row_sum[wg][get<0>(c_rc(mi, 0))] = sum;
    }
    consumer_sync(kBarRowSum);
  }

  const int group = p.num_heads_q / p.num_heads_k, rows = p.rows_per_group();
  CUTLASS_PRAGMA_UNROLL
  for (int mi = 0; mi < 2; ++mi) {
    const int r = get<0>(c_rc(mi, 0));
    const float sum = has_keys ? ss.row_sum[0][r] + ss.row_sum[1][r] : 0.f;
    const bool empty = sum == 0.f;  // no visible key in this piece (NaN inputs stay NaN)
    const float inv_sum = empty ? 0.f : 1.f / sum;
    const float lse = empty ? -INFINITY : softmax.row_max[mi] * (softmax.scale_log2 * 0.6931471805599453f) + __logf(sum);
    const int row = m_block * Traits::kBlockM + r;
    if (row >= rows) continue;
    const int s = row / group, h = head_k * group + row % group;
    const int col0 = wg * kHalfV;
    if (piece.whole) {
      Element* o = static_cast<Element*>(p.out) + piece.batch * p.o_batch_stride + s * p.o_row_stride +
                   h * p.o_head_stride + col0;
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < size<1>(o_rc); ni += 2) {
        const int c = get<1>(c_rc(mi, ni));
        cutlass::Array<Element, 2> v;
        v[0] = Element(o_rc(mi, ni) * inv_sum);
        v[1] = Element(o_rc(mi, ni + 1) * inv_sum);
        *reinterpret_cast<cutlass::Array<Element, 2>*>(o + c) = v;
      }
      if (wg == 0 && tid % 4 == 0) p.lse[((int64_t)piece.batch * p.seqlen_q + s) * p.num_heads_q + h] = lse;
    } else {
      const int64_t acc_row = ((int64_t)piece.slot * p.num_heads_k + head_k) * rows + row;
      float* o = p.o_accum + acc_row * Traits::kHeadDimV + col0;
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < size<1>(o_rc); ni += 2) {
        const int c = get<1>(c_rc(mi, ni));
        *reinterpret_cast<float2*>(o + c) = make_float2(o_rc(mi, ni) * inv_sum, o_rc(mi, ni + 1) * inv_sum);
      }
      if (wg == 0 && tid % 4 == 0) p.lse_accum[acc_row] = lse;
    }
  }
}

}  // namespace attnx::mla

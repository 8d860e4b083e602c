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
  const int col0 = wg * kHalfV;
  float inv_sum[2];
  CUTLASS_PRAGMA_UNROLL
  for (int mi = 0; mi < 2; ++mi) {
    const int r = get<0>(c_rc(mi, 0));
    const float sum = has_keys ? ss.row_sum[0][r] + ss.row_sum[1][r] : 0.f;
    const bool empty = sum == 0.f;  // no visible key in this piece (NaN inputs stay NaN)
    inv_sum[mi] = empty ? 0.f : 1.f / sum;
    const float lse = empty ? -INFINITY : softmax.row_max[mi] * (softmax.scale_log2 * 0.6931471805599453f) + __logf(sum);
    const int row = m_block * Traits::kBlockM + r;
    if (wg != 0 || tid % 4 != 0 || row >= rows) continue;
    const int s = row / group, h = head_k * group + row % group;
    if (piece.whole)
      p.lse[((int64_t)piece.batch * p.seqlen_q + s) * p.num_heads_q + h] = lse;
    else
      p.lse_accum[((int64_t)piece.slot * p.num_heads_k + head_k) * rows + row] = lse;
  }

  if (piece.whole) {
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < 2; ++mi) {
      const int row = m_block * Traits::kBlockM + get<0>(c_rc(mi, 0));
      if (row >= rows) continue;
      const int s = row / group, h = head_k * group + row % group;
      Element* o = static_cast<Element*>(p.out) + piece.batch * p.o_batch_stride + s * p.o_row_stride +
                   h * p.o_head_stride + col0;
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < size<1>(o_rc); ni += 2) {
        const int c = get<1>(c_rc(mi, ni));
        cutlass::Array<Element, 2> v;
        v[0] = Element(o_rc(mi, ni) * inv_sum[mi]);
        v[1] = Element(o_rc(mi, ni + 1) * inv_sum[mi]);
        *reinterpret_cast<cutlass::Array<Element, 2>*>(o + c) = v;
      }
    }
    return;
  }

  // Partial result, in the input dtype (mla_params.h): straight from the accumulators each store
  // instruction would touch 8 rows x 32 bytes, and these stores cost more than the page stream
  // around them (measured). So stage floats through the query tile (free: the piece's last
  // S = Q K^T is done) and write whole 16-byte chunks of 8 values, a warp covering 512 contiguous
  // bytes. Each warpgroup stages 32 of its 64 rows at a time in its own half of the tile; the row
  // pitch of 264 floats keeps both the float2 writes (16 lanes = 4 rows x 8 banks) and the float4
  // reads free of bank conflicts.
  constexpr int kPitch = kHalfV + 8;
  static_assert(2 * 32 * kPitch * sizeof(float) <= sizeof(ss.q), "staging must fit in the query tile");
  float* stage = reinterpret_cast<float*>(ss.q.data()) + wg * 32 * kPitch;
  const int64_t acc_row0 = ((int64_t)piece.slot * p.num_heads_k + head_k) * rows + m_block * Traits::kBlockM;
  using Chunk = cutlass::AlignedArray<Element, 8>;  // 16 bytes
  Chunk* o_accum = static_cast<Chunk*>(p.o_accum);
  const int warp = tid / 32;  // rows 16 warp .. 16 warp + 15 of the warpgroup's accumulator
  CUTLASS_PRAGMA_UNROLL
  for (int half = 0; half < 2; ++half) {
    if (warp / 2 == half) {
      CUTLASS_PRAGMA_UNROLL
      for (int mi = 0; mi < 2; ++mi) {
        const int r = get<0>(c_rc(mi, 0)) - 32 * half;
        CUTLASS_PRAGMA_UNROLL
        for (int ni = 0; ni < size<1>(o_rc); ni += 2) {
          const int c = get<1>(c_rc(mi, ni));
          *reinterpret_cast<float2*>(stage + r * kPitch + c) =
              make_float2(o_rc(mi, ni) * inv_sum[mi], o_rc(mi, ni + 1) * inv_sum[mi]);
        }
      }
    }
    NamedBarrier::sync(kBarStage + wg, 128);
    constexpr int kChunks = kHalfV / 8;  // 16-byte chunks per staged row
    const int valid_rows = min(32, rows - (m_block * Traits::kBlockM + 32 * half));
    for (int idx = tid; idx < valid_rows * kChunks; idx += 128) {
      const int r = idx / kChunks, v = idx % kChunks;
      const float4 a = *reinterpret_cast<const float4*>(stage + r * kPitch + 8 * v);
      const float4 b = *reinterpret_cast<const float4*>(stage + r * kPitch + 8 * v + 4);
      Chunk out;
      out[0] = Element(a.x), out[1] = Element(a.y), out[2] = Element(a.z), out[3] = Element(a.w);
      out[4] = Element(b.x), out[5] = Element(b.y), out[6] = Element(b.z), out[7] = Element(b.w);
      o_accum[(acc_row0 + 32 * half + r) * (Traits::kHeadDimV / 8) + col0 / 8 + v] = out;
    }
    NamedBarrier::sync(kBarStage + wg, 128);
  }
  consumer_sync(kBarRowSum);  // the next piece's query block overwrites the staging area
}

}  // namespace attnx::mla

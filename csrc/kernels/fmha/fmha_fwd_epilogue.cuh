// Epilogue of the forward: normalise O, stage it through shared memory (stmatrix into the Q
// tile's bytes) and write whole 16-byte row segments to global memory, rows the row map calls
// invalid skipped; lse from the quad leader of each row.
//
// A row map says where row r of the Q tile goes: valid(r), out_row(r) (the row's head vector)
// and lse_row(r). Families differ only there (runs of rows here, multi-dimensional tiles in
// neighborhood attention).
#pragma once

#include <cute/tensor.hpp>

#include "../common/named_barrier.cuh"
#include "fmha_params.h"
#include "wgmma_gemm.cuh"

namespace attnx::fmha {

using namespace cute;

// Rows row0 + r of a sequence of seqlen rows with the given strides (dense and packed layouts).
template <typename Element>
struct SeqRowMap {
  Element* out;
  int64_t out_row_stride;
  float* lse;
  int lse_row_stride;
  int row0, seqlen;
  __device__ bool valid(int r) const { return row0 + r < seqlen; }
  __device__ Element* out_row(int r) const { return out + (int64_t)(row0 + r) * out_row_stride; }
  __device__ float* lse_row(int r) const { return lse + (int64_t)(row0 + r) * lse_row_stride; }
};

// smem_o: a Q-tile-shaped staging buffer (the Q tile's own bytes once Q is no longer read).
template <class Traits, class TensorO, class Softmax, class RowMap>
__device__ void fmha_fwd_store(typename Traits::Element* smem_o, TensorO& tOrO, const Softmax& softmax,
                               const RowMap& rows, int mma_tid) {
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM, kHeadDim = Traits::kHeadDim;
  constexpr int kRows = Softmax::kNumRows;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_pv = mma_pv.get_thread_slice(mma_tid);

  float inv_sum[kRows], lse[kRows];
  softmax.finalize(inv_sum, lse);
  Tensor o_rc = make_tensor(tOrO.data(), accumulator_rowcol(tOrO.layout()));
  CUTLASS_PRAGMA_UNROLL
  for (int mi = 0; mi < kRows; ++mi)
    CUTLASS_PRAGMA_UNROLL
    for (int ni = 0; ni < size<1>(o_rc); ++ni) o_rc(mi, ni) *= inv_sum[mi];

  Tensor tOcO = thr_pv.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Tensor c_rc = make_tensor(tOcO.data(), accumulator_rowcol(tOcO.layout()));
  if (mma_tid % 4 == 0) {
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      const int r = get<0>(c_rc(mi, 0));
      if (rows.valid(r)) *rows.lse_row(r) = lse[mi];
    }
  }

  Tensor rO = convert_fragment<Element>(tOrO, tOrO.layout());
  Tensor sO = make_tensor(make_smem_ptr(smem_o), typename Traits::SmemLayoutQ{});
  auto store_tile = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, mma_pv);
  auto thr_store = store_tile.get_thread_slice(mma_tid);
  // Each warpgroup writes and then reads only its own 64 rows; the first barrier keeps a reused
  // buffer's earlier rows until every thread of the warpgroup has stored them.
  const int wg = mma_tid / 128, wg_tid = mma_tid % 128;
  NamedBarrier::sync(1 + wg, 128);
  copy(store_tile, thr_store.retile_S(rO), thr_store.partition_D(sO));
  NamedBarrier::sync(1 + wg, 128);
  constexpr int kVecs = kHeadDim / 8;  // 16-byte segments per row
  CUTLASS_PRAGMA_UNROLL
  for (int idx = wg_tid; idx < 64 * kVecs; idx += 128) {
    const int r = 64 * wg + idx / kVecs, c = (idx % kVecs) * 8;
    if (rows.valid(r)) {
      // Through the tensor: the 128-byte swizzle acts on byte addresses (it permutes 16-byte
      // chunks, so the 8 elements from c are contiguous).
      const Element* src = &sO(r, c);
      *reinterpret_cast<uint4*>(rows.out_row(r) + c) = *reinterpret_cast<const uint4*>(src);
    }
  }
}

// A Q tile that sees no key: out = 0 and lse = -inf, stored straight to global memory (in a
// persistent CTA the staging buffer may already hold the next tile's Q).
template <class Traits, class RowMap>
__device__ void fmha_fwd_store_no_keys(const RowMap& rows, int mma_tid) {
  constexpr int kVecs = Traits::kHeadDim / 8;  // 16-byte segments per row
  for (int idx = mma_tid; idx < Traits::kBlockM * kVecs; idx += Traits::kNumMmaThreads) {
    const int r = idx / kVecs, c = (idx % kVecs) * 8;
    if (rows.valid(r)) {
      *reinterpret_cast<uint4*>(rows.out_row(r) + c) = make_uint4(0, 0, 0, 0);
      if (c == 0) *rows.lse_row(r) = -INFINITY;
    }
  }
}

}  // namespace attnx::fmha

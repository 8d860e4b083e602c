// Compile-time shape of the tiled sparse backward (sparse_gather_bwd_kernel.cuh). The CTA is the
// forward's tile (128 ordered queries, two consumer warpgroups of 64) walking the same chunks of
// 128 union keys, so the producer is the forward's (sparse_gather_load.cuh) with a longer
// prologue (Q, dO and each row's statistics). Per chunk five wgmma:
//   S = Q K^T and dP = dO V^T   (64 queries x 128 keys per warpgroup, operands in shared memory);
//   dQ += dS K                  (dS from registers, K read transposed: it stays with the tile);
//   dV_c = P^T dO, dK_c = dS^T Q (64 keys x D per warpgroup over all 128 queries, so P and dS go
//                                 through shared memory, stored transposed by stmatrix).
// dV_c and dK_c are added to float32 accumulators at the union keys' rows (the keys of a chunk
// differ from tile to tile, so they cannot stay in registers as in the dense backward).
// Head dim 64 only: at 128 the five accumulators do not fit the consumers' registers.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/gemm/collective/builders/sm90_common.inl>
#include <cutlass/pipeline/pipeline.hpp>

#include "../fmha/fmha_fwd_traits.h"
#include "sparse_params.h"

namespace attnx::sparse {

using namespace cute;

template <typename Element_, int kHeadDim_>
struct SparseGatherBwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static_assert(kHeadDim == 64, "the consumers' registers hold five 64-column accumulators at most");
  static constexpr int kBlockM = kGatherTileM, kBlockN = kGatherTileN;
  static constexpr int kStages = 2;
  static constexpr int kMaskSlots = kStages + 1;  // as the forward: see SparseGatherTraits
  // The forward's shapes give S/dP (ss, 64 x 128 x D per warpgroup), dQ (rs, B = K transposed)
  // and the Q / K tile layouts.
  using Fwd = fmha::FmhaFwdTraits<Element, kHeadDim, kBlockM, kBlockN, kStages, false>;
  static constexpr int kNumMmaWarpgroups = 2;
  static constexpr int kNumMmaThreads = 256;
  static constexpr int kNumThreads = 384;
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;  // 128 * 24 + 256 * 240 = 64512 = 384 * 168
  static_assert(128 * kProducerRegs + kNumMmaThreads * kConsumerRegs <= 65536);

  using D = Int<kHeadDim>;
  using BM = Int<kBlockM>;
  using BN = Int<kBlockN>;
  using TiledMmaSdP = typename Fwd::TiledMmaQK;  // (queries, keys, D)
  using TiledMmadQ = typename Fwd::TiledMmaPV;   // (queries, D, keys), A from registers
  // dV_c = P^T dO and dK_c = dS^T Q: (keys, D, queries), each warpgroup 64 keys, A from shared
  // memory (keys x queries, queries contiguous), B = dO / Q read transposed.
  using TiledMmadKV = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, D, BM>, GMMA::Major::K, GMMA::Major::MN>(),
      Layout<Shape<_2, _1, _1>>{}));

  using SmemLayoutQ = typename Fwd::SmemLayoutQ;    // (queries, D), also dO
  using SmemLayoutKV = typename Fwd::SmemLayoutKV;  // (keys, D, stage)
  using SmemLayoutKt = typename Fwd::SmemLayoutVt;  // (D, keys, stage): K as dQ's B operand
  using SmemLayoutQt = decltype(composition(SmemLayoutQ{}, make_ordered_layout(Shape<D, BM>{}, Step<_2, _1>{})));
  // P^T and dS^T: (keys, queries) with queries contiguous; the consumers store their (queries,
  // keys) accumulators through the transposed view with stmatrix.trans.
  using SmemLayoutPt = decltype(tile_to_shape(
      cutlass::gemm::collective::detail::ss_smem_selector<GMMA::Major::K, Element, BN, BM>(), Shape<BN, BM>{}));
  using SmemLayoutP = decltype(composition(SmemLayoutPt{}, make_ordered_layout(Shape<BM, BN>{}, Step<_2, _1>{})));

  using Pipeline = cutlass::PipelineAsync<kStages>;
  using PipelineState = typename Pipeline::PipelineState;

  struct SharedStorage {
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> dout;
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 1024> k;
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 1024> v;
    cute::array_aligned<Element, cosize_v<SmemLayoutPt>, 1024> pt;
    cute::array_aligned<Element, cosize_v<SmemLayoutPt>, 1024> dst;
    cute::array_aligned<uint32_t, kMaskSlots * kGatherTileM * 4, 16> mask;  // [slot][row][4 words]
    alignas(16) float2 stats[kBlockM];  // per query row: {lse * log2(e), delta}
    typename Pipeline::SharedStorage pipeline_k;
    typename Pipeline::SharedStorage pipeline_v;
    uint64_t barrier_q;  // the prologue (Q, dO, stats) has landed
  };
  static constexpr int kSmemBytes = sizeof(SharedStorage);
  static_assert(kSmemBytes <= 227 * 1024, "over the sm_90 shared-memory limit per block");
};

}  // namespace attnx::sparse

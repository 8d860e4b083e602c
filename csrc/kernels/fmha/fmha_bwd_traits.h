// Compile-time shape of the Hopper backward kernel.
//
// One CTA owns a kBlockN-row KV tile of one KV head and walks the Q tiles (of every query head of
// its GQA group) that see it; dK and dV stay in registers for the whole walk (so GQA reduces over
// the group without atomics). Each of the two consumer warpgroups owns 64 keys and computes the
// transposed scores S^T = K Q^T and dP^T = V dO^T, so P^T and dS^T land in registers in exactly the
// form the register-A wgmma of dV += P^T dO and dK += dS^T Q takes. dQ = dS K needs dS with the
// queries as rows: it goes through shared memory, both warpgroups computing half of dQ's columns;
// the partial dQ tile is staged in shared memory and a writer warp adds it to a float32
// accumulator in global memory with one bulk reduce-add per step.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/gemm/collective/builders/sm90_common.inl>
#include <cutlass/pipeline/pipeline.hpp>

#include "fmha_params.h"
#include "tma_common.cuh"

namespace attnx::fmha {

using namespace cute;

template <typename Element_, int kHeadDim_, int kBlockN_, int kStages_, int kDqStages_ = 2>
struct FmhaBwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBwdBlockM;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  // Staged dQ tiles (shared memory): two let the consumers write step i + 1's while step i's is
  // still being read by the bulk reduce-add; one leaves room for a family's own tables.
  static constexpr int kDqStages = kDqStages_;
  static_assert(kDqStages == 1 || kDqStages == 2);
  static constexpr int kNumMmaWarpgroups = kBlockN / 64;
  static_assert(kNumMmaWarpgroups == 2, "dQ is split in column halves between two warpgroups");
  static constexpr int kNumMmaThreads = 128 * kNumMmaWarpgroups;
  static constexpr int kNumThreads = kNumMmaThreads + 128;
  // setmaxnreg split (128 * producer + 256 * consumer <= 65536). The producer's walk (head, tile,
  // workspace addresses) needs about 56 registers; at head dim 128 the consumers need all of 240,
  // so there the producer thread spills a little (ptxas: ~190 bytes, off the consumers' path).
  static constexpr int kProducerRegs = kHeadDim <= 64 ? 56 : 24;
  static constexpr int kConsumerRegs = kHeadDim <= 64 ? 224 : 240;

  using D = Int<kHeadDim>;
  using BM = Int<kBlockM>;
  using BN = Int<kBlockN>;
  // S^T and dP^T: (keys, queries, head dim), each warpgroup 64 keys.
  using TileShapeSdP = Shape<BN, BM, D>;
  using TiledMmaSdP = decltype(make_tiled_mma(GMMA::ss_op_selector<Element, Element, float, Shape<_64, BM, D>>(),
                                              Layout<Shape<_2, _1, _1>>{}));
  // dV += P^T dO and dK += dS^T Q: (keys, head dim, queries), A from registers.
  using TileShapedKV = Shape<BN, D, BM>;
  using TiledMmadKV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<_64, D, BM>, GMMA::Major::K, GMMA::Major::MN>(),
      Layout<Shape<_2, _1, _1>>{}));
  // dQ = dS K: (queries, head dim, keys), each warpgroup half of the head dim.
  using TileShapedQ = Shape<BM, D, BN>;
  using TiledMmadQ = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<BM, Int<kHeadDim / 2>, BN>, GMMA::Major::K,
                           GMMA::Major::MN>(),
      Layout<Shape<_1, _2, _1>>{}));

  template <class Rows, class Cols>
  using KMajorAtom =
      decltype(cutlass::gemm::collective::detail::ss_smem_selector<GMMA::Major::K, Element, Rows, Cols>());
  using SmemLayoutKV = decltype(tile_to_shape(KMajorAtom<BN, D>{}, Shape<BN, D>{}));
  using SmemLayoutKVt = decltype(composition(SmemLayoutKV{}, make_ordered_layout(Shape<D, BN>{}, Step<_2, _1>{})));
  using SmemLayoutQ = decltype(tile_to_shape(KMajorAtom<BM, D>{}, Shape<BM, D, Int<kStages>>{}));
  using SmemLayoutQt = decltype(composition(SmemLayoutQ{},
                                            make_ordered_layout(Shape<D, BM, Int<kStages>>{}, Step<_2, _1, _3>{})));
  // dS is double-buffered: step i writes buffer i % 2 while the other warpgroup may still read
  // buffer (i - 1) % 2 for its dQ, so one barrier per step suffices (see fmha_bwd_mma).
  using SmemLayoutdS = decltype(tile_to_shape(KMajorAtom<BM, BN>{}, Shape<BM, BN, _2>{}));
  using SmemLayoutdSt =
      decltype(composition(SmemLayoutdS{}, make_ordered_layout(Shape<BN, BM, _2>{}, Step<_2, _1, _3>{})));

  using Gmem = QkvGmem<Element, kHeadDim>;
  using ShapeQKV = typename Gmem::Shape;
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, typename Gmem::Tensor{}, take<0, 2>(SmemLayoutQ{}), Shape<BM, D>{}, _1{}));
  using TmaKV = decltype(make_tma_copy(SM90_TMA_LOAD{}, typename Gmem::Tensor{}, SmemLayoutKV{}, Shape<BN, D>{}, _1{}));

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename Pipeline::PipelineState;
  // A Q (dO) stage also carries that tile's 64 lse (dpsum) values.
  static constexpr uint32_t kTmaBytesQ = kBlockM * kHeadDim * sizeof(Element) + kBlockM * sizeof(float);
  static constexpr uint32_t kTmaBytesKV = kBlockN * kHeadDim * sizeof(Element);

  struct SharedStorage {
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 1024> k;
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 1024> v;
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> dout;
    cute::array_aligned<Element, cosize_v<SmemLayoutdS>, 1024> ds;
    // dQ partials of the last kDqStages steps (DqTileLayout order), added to the workspace by the
    // dQ writer warp with bulk reduce-adds, so the consumers never wait on global atomics.
    cute::array_aligned<float, kDqStages * kBlockM * kHeadDim, 128> dq;
    alignas(128) float lse_log2[kStages][kBlockM];  // per stage: lse * log2(e) (+inf: row contributes nothing)
    alignas(128) float dpsum[kStages][kBlockM];     // per stage: rowsum(dO * O) - dlse
    typename Pipeline::SharedStorage pipeline_q;
    typename Pipeline::SharedStorage pipeline_do;
    uint64_t barrier_kv;        // K and V of the current work tile have landed (phase per tile)
    uint64_t barrier_kv_empty;  // the consumers are done with them (CTAs walking several tiles)
  };
  static constexpr int kSmemBytes = sizeof(SharedStorage);
  static_assert(kSmemBytes <= 227 * 1024, "over the sm_90 shared-memory limit per block");
};

// Where element (r, c) of a 64 x D dQ tile sits, in shared memory and in the workspace (the bulk
// reduce-add copies the tile as is): row-major with column pairs XOR-swizzled by row, so a warp's
// float2 stores of its accumulator (8 rows x 4 pairs per instruction) hit distinct banks.
template <int kHeadDim>
struct DqTileLayout {
  static constexpr int kPairs = kHeadDim / 2;
  __host__ __device__ static constexpr int swizzle(int r) { return ((r & 7) << 2) & (kPairs - 1); }
  // Offset (floats) of the pair holding columns (c, c + 1), c even.
  __host__ __device__ static constexpr int pair_offset(int r, int c) {
    return r * kHeadDim + (((c >> 1) ^ swizzle(r)) << 1);
  }
};

template <typename Element, int kHeadDim>
struct FmhaBwdConfig {
  using Traits = FmhaBwdTraits<Element, kHeadDim, 128, 2>;
};

}  // namespace attnx::fmha

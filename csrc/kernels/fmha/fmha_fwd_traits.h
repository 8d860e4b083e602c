// Compile-time shape of the Hopper forward kernel: tiles, warp roles, wgmma atoms, shared-memory
// layouts, TMA copy types and the shared-storage struct.
//
// Warp roles: warpgroup 0 is the producer (one thread issues every TMA load), warpgroups
// 1..kNumMmaWarpgroups are consumers, each owning 64 rows of the kBlockM-row Q tile. Both
// GEMMs of a consumer are wgmma: S = Q K^T with both operands in shared memory, O += P V with P
// taken straight from the S accumulator registers (no shared-memory round trip for P).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/gemm/collective/builders/sm90_common.inl>
#include <cutlass/pipeline/pipeline.hpp>

#include "tma_common.cuh"

namespace attnx::fmha {

using namespace cute;

template <typename Element_, int kHeadDim_, int kBlockM_, int kBlockN_, int kStages_, bool kPingPong_,
          int kMinBlocksPerSm_ = 1>
struct FmhaFwdTraits {
  using Element = Element_;  // cutlass::half_t or cutlass::bfloat16_t
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  // Consumer warpgroups take turns issuing GEMMs (see WarpgroupScheduler).
  static constexpr bool kPingPong = kPingPong_;
  static_assert(kBlockM % 64 == 0, "each consumer warpgroup owns 64 rows (the wgmma M)");
  static_assert(kBlockN % 16 == 0 && kHeadDim % 16 == 0, "wgmma K steps are 16 elements");

  static constexpr int kNumMmaWarpgroups = kBlockM / 64;
  static constexpr int kNumMmaThreads = 128 * kNumMmaWarpgroups;
  static constexpr int kNumThreads = kNumMmaThreads + 128;
  // CTAs resident per SM (the kernel's launch bound): more than one lets one CTA's start-up and
  // epilogue run beside another's GEMMs, which pays where walks are a few tiles long.
  static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;
  // Register budget after setmaxnreg: the producer keeps a minimum, consumers share the rest of
  // the registers this CTA launched with (its share of the 64K file, at most 255 per thread);
  // multiples of 8, at most 240.
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = [] {
    int launch = 65536 / (kMinBlocksPerSm * kNumThreads);
    launch = (launch > 255 ? 255 : launch) / 8 * 8;
    const int consumer = (launch * kNumThreads - 128 * kProducerRegs) / kNumMmaThreads / 8 * 8;
    return consumer > 240 ? 240 : consumer;
  }();

  using TileShapeQK = Shape<Int<kBlockM>, Int<kBlockN>, Int<kHeadDim>>;
  using TileShapePV = Shape<Int<kBlockM>, Int<kHeadDim>, Int<kBlockN>>;
  using MmaWarpgroups = Layout<Shape<Int<kNumMmaWarpgroups>, _1, _1>>;
  using TiledMmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockN>, Int<kHeadDim>>>(), MmaWarpgroups{}));
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<_64, Int<kHeadDim>, Int<kBlockN>>, GMMA::Major::K,
                           GMMA::Major::MN>(),
      MmaWarpgroups{}));

  using SmemLayoutAtomQ = decltype(cutlass::gemm::collective::detail::ss_smem_selector<
                                   GMMA::Major::K, Element, Int<kBlockM>, Int<kHeadDim>>());
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtomQ{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutAtomKV = decltype(cutlass::gemm::collective::detail::ss_smem_selector<
                                    GMMA::Major::K, Element, Int<kBlockN>, Int<kHeadDim>>());
  using SmemLayoutKV =
      decltype(tile_to_shape(SmemLayoutAtomKV{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  // V is read by O = P V as a (head dim, key) operand: the same bytes seen transposed, which
  // wgmma consumes as an MN-major B operand.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{},
      make_ordered_layout(make_shape(Int<kHeadDim>{}, Int<kBlockN>{}, Int<kStages>{}), Step<_2, _1, _3>{})));

  using Gmem = QkvGmem<Element, kHeadDim>;
  using ShapeQKV = typename Gmem::Shape;
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, typename Gmem::Tensor{}, SmemLayoutQ{},
                                      Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using TmaKV = decltype(make_tma_copy(SM90_TMA_LOAD{}, typename Gmem::Tensor{}, take<0, 2>(SmemLayoutKV{}),
                                       Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename Pipeline::PipelineState;
  static constexpr uint32_t kTmaBytesQ = kBlockM * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesKV = kBlockN * kHeadDim * sizeof(Element);

  struct SharedStorage {
    // 128-byte swizzled tiles need 1024-byte aligned bases (the swizzle acts on address bits).
    // The O tile reuses Q's bytes: each warpgroup writes only its own 64 rows, after its last
    // read of them.
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 1024> k;
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 1024> v;
    typename Pipeline::SharedStorage pipeline_k;
    typename Pipeline::SharedStorage pipeline_v;
    uint64_t barrier_q;
  };
  static constexpr int kSmemBytes = sizeof(SharedStorage);
  static_assert(kSmemBytes <= 227 * 1024, "over the sm_90 shared-memory limit per block");
  // 1 KB of each SM's 228 KB is reserved per resident CTA.
  static_assert(kMinBlocksPerSm * (kSmemBytes + 1024) <= 228 * 1024, "resident CTAs exceed the SM's shared memory");
};

}  // namespace attnx::fmha

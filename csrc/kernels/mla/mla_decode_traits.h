// Compile-time shape of the MLA decode kernel: tiles, warp roles, wgmma atoms, shared-memory
// layouts and the TMA copy of one cache page.
//
// One CTA owns a 64-row query block of one (KV head, split part) and streams the part's pages.
// Warp roles: warpgroup 0 produces (one thread issues the TMA loads of whole 64-token pages),
// warpgroups 1 and 2 consume. The 64 x 512 fp32 output accumulator is too big for one warpgroup's
// registers, so each consumer owns half of the value columns; to keep both equally busy each
// also computes half of the scores (32 of the page's 64 keys, over all 576 columns), and the two
// halves meet in shared memory: row maxima and sums through small arrays, the probabilities P
// through one 64 x 64 tile that both read for O += P V.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/gemm/collective/builders/sm90_common.inl>
#include <cutlass/pipeline/pipeline.hpp>

namespace attnx::mla {

using namespace cute;

template <typename Element_>
struct MlaDecodeTraits {
  using Element = Element_;
  static constexpr int kHeadDim = 576, kHeadDimV = 512;
  static constexpr int kBlockM = 64;  // query rows per CTA (the wgmma M)
  static constexpr int kPage = 64;    // keys per page = keys per pipeline stage
  static constexpr int kStages = 2;   // two 72 KB pages next to the 72 KB query tile
  static constexpr int kHalfN = kPage / 2, kHalfV = kHeadDimV / 2;

  static constexpr int kNumMmaThreads = 256;
  static constexpr int kNumThreads = kNumMmaThreads + 128;
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  // setmaxnreg only moves registers within the pool the CTA was launched with (__launch_bounds__
  // (384, 1): 168 per thread). A split that asks for more than the pool makes the consumers'
  // setmaxnreg.inc wait forever (seen 2026-12-07: 32 producer registers hung every CTA).
  static_assert(128 * kProducerRegs + kNumMmaThreads * kConsumerRegs == kNumThreads * 168,
                "warpgroup register split must equal the launch allocation");

  using _D = Int<kHeadDim>;
  using _DV = Int<kHeadDimV>;
  // S_half = Q K_half^T and O_half += P V_half: one warpgroup each, both operands in shared memory.
  using TiledMmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kHalfN>, _D>>()));
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kHalfV>, Int<kPage>>, GMMA::Major::K,
                           GMMA::Major::MN>()));

  using SmemLayoutAtom = decltype(cutlass::gemm::collective::detail::ss_smem_selector<
                                  GMMA::Major::K, Element, _64, _D>());
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<_64, _D>{}));
  using SmemLayoutKV = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kPage>, _D, Int<kStages>>{}));
  // V = the first 512 columns of the page, read by O = P V as a (value column, key) operand: the
  // same bytes seen transposed, an MN-major B operand for wgmma.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{}, make_layout(Shape<_DV, Int<kPage>, Int<kStages>>{},
                                  Stride<Int<kPage>, _1, Int<kPage * kHeadDim>>{})));
  using SmemLayoutAtomP = decltype(cutlass::gemm::collective::detail::ss_smem_selector<
                                   GMMA::Major::K, Element, _64, Int<kPage>>());
  using SmemLayoutP = decltype(tile_to_shape(SmemLayoutAtomP{}, Shape<_64, Int<kPage>>{}));

  // The cache as TMA sees it: (token in page, column, KV head, page).
  using GmemShapeKV = Shape<int32_t, int32_t, int32_t, int32_t>;
  using GmemStrideKV = Stride<int64_t, _1, int64_t, int64_t>;
  using GmemTensorKV = decltype(make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemShapeKV{},
                                            GmemStrideKV{}));
  using TmaKV = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensorKV{}, take<0, 2>(SmemLayoutKV{}),
                                       Shape<Int<kPage>, _D>{}, _1{}));

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename Pipeline::PipelineState;
  static constexpr uint32_t kTmaBytesPage = kPage * kHeadDim * sizeof(Element);

  struct SharedStorage {
    // 128-byte swizzled tiles need 1024-byte aligned bases (the swizzle acts on address bits).
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 1024> kv;
    cute::array_aligned<Element, cosize_v<SmemLayoutP>, 1024> p;
    float row_max[2][kBlockM];  // per consumer warpgroup: the max over its half of the page
    float row_sum[2][kBlockM];
    typename Pipeline::SharedStorage pipeline;
  };
  static constexpr int kSmemBytes = sizeof(SharedStorage);
  static_assert(kSmemBytes <= 227 * 1024, "over the sm_90 shared-memory limit per block");
};

}  // namespace attnx::mla

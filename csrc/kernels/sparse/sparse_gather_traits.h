// Compile-time shape of the tiled sparse forward (sparse_gather_fwd_kernel.cuh): the dense
// forward's tiles, wgmma atoms and shared-memory layouts (FmhaFwdTraits), with a pipeline whose
// producer is a whole warpgroup of cp.async gathers instead of one TMA thread, a ring of mask
// slots, and a register split that gives the gathering producer room.
//
// Tiles: 128 ordered queries (two consumer warpgroups) against chunks of 128 union keys: one
// producer thread per query row (its Q row, its mask word) and per key row (its K and V rows).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/pipeline/pipeline.hpp>

#include "../fmha/fmha_fwd_traits.h"
#include "sparse_params.h"

namespace attnx::sparse {

using namespace cute;

template <class Base, int kProducerRegs_>
struct SparseGatherTraits : Base {
  static_assert(Base::kBlockM == kGatherTileM && Base::kBlockN == kGatherTileN && Base::kMinBlocksPerSm == 1,
                "one producer thread per query row and per key row of a chunk");
  using Element = typename Base::Element;
  // Every producer thread arrives once per stage (after its own cp.async have landed), every
  // consumer thread releases it.
  using Pipeline = cutlass::PipelineAsync<Base::kStages>;
  using PipelineState = typename Pipeline::PipelineState;
  // The consumers mask a chunk after releasing its K stage, so its mask words live in a ring one
  // slot longer than the pipeline: the producer refills slot c % kMaskSlots for chunk
  // c + kMaskSlots only after acquiring that chunk's K stage, i.e. after both consumer
  // warpgroups released chunk c + 1's K, which they do after masking chunk c.
  static constexpr int kMaskSlots = Base::kStages + 1;
  // The producer computes gather addresses and needs more than a TMA thread's 24 registers; what
  // it takes comes out of the consumers' share (multiples of 8: setmaxnreg's granularity).
  static constexpr int kProducerRegs = kProducerRegs_;
  static constexpr int kConsumerRegs =
      (128 * Base::kProducerRegs + Base::kNumMmaThreads * Base::kConsumerRegs - 128 * kProducerRegs) /
      Base::kNumMmaThreads / 8 * 8;
  static_assert(128 * kProducerRegs + Base::kNumMmaThreads * kConsumerRegs <=
                128 * Base::kProducerRegs + Base::kNumMmaThreads * Base::kConsumerRegs);

  struct SharedStorage {
    cute::array_aligned<Element, cosize_v<typename Base::SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cosize_v<typename Base::SmemLayoutKV>, 1024> k;
    cute::array_aligned<Element, cosize_v<typename Base::SmemLayoutKV>, 1024> v;
    cute::array_aligned<uint32_t, kMaskSlots * kGatherTileM * 4, 16> mask;  // [slot][row][4 words]
    typename Pipeline::SharedStorage pipeline_k;
    typename Pipeline::SharedStorage pipeline_v;
    uint64_t barrier_q;  // 128 producer arrivals: Q's rows have landed
  };
  static constexpr int kSmemBytes = sizeof(SharedStorage);
  static_assert(kSmemBytes <= 227 * 1024, "over the sm_90 shared-memory limit per block");
};

// Head dim 64 is softmax-bound: the warpgroups take turns, and a third stage covers the gathers'
// latency (L2, not TMA). Head dim 128: two stages fit shared memory. Producer registers: what
// ptxas spilled least with (bf16, 2026-12-08, with the shifted-word mask test: D 64 none at 40,
// D 128 8 bytes at 24); not yet measured on a GPU.
template <typename Element, int kHeadDim>
struct SparseGatherConfig;
template <typename Element>
struct SparseGatherConfig<Element, 64> {
  using Traits = SparseGatherTraits<fmha::FmhaFwdTraits<Element, 64, 128, 128, 3, true>, 40>;
};
template <typename Element>
struct SparseGatherConfig<Element, 128> {
  using Traits = SparseGatherTraits<fmha::FmhaFwdTraits<Element, 128, 128, 128, 2, false>, 24>;
};

}  // namespace attnx::sparse

// Compile-time shape of one forward instance: tile sizes, warps, shared-memory budget,
// and the per-dtype instruction choices (mma atom, fp32 -> 16-bit packing).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cute/arch/mma_sm80.hpp>

namespace attnx::fmha {

template <typename T>
struct ElementOps;

template <>
struct ElementOps<__half> {
  using Mma = cute::SM80_16x8x16_F32F16F16F32_TN;
  __device__ static uint32_t pack(float a, float b) {
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

template <>
struct ElementOps<__nv_bfloat16> {
  using Mma = cute::SM80_16x8x16_F32BF16BF16F32_TN;
  __device__ static uint32_t pack(float a, float b) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

// Each warp owns 16 query rows (one m16 mma tile), so kBlockM = 16 * kNumWarps.
template <typename Element_, int kHeadDim_, int kBlockM_ = 128, int kBlockN_ = 64>
struct FmhaFwdTraits {
  using Element = Element_;
  using Ops = ElementOps<Element>;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNumWarps = kBlockM / 16;
  static constexpr int kNumThreads = kNumWarps * 32;
  static constexpr int kNTilesS = kBlockN / 8;     // n8 tiles of S per warp
  static constexpr int kNTilesO = kHeadDim / 8;    // n8 tiles of O per warp
  static constexpr int kKStepsQK = kHeadDim / 16;  // k16 steps of Q K^T
  static constexpr int kKStepsPV = kBlockN / 16;   // k16 steps of P V
  // The XOR swizzle permutes 16-byte chunks within a row among groups of 8: rows need >= 8 chunks.
  static_assert(kHeadDim % 64 == 0, "head dim must be a multiple of 64 for the swizzled smem tiles");
  static_assert(kBlockN % 16 == 0 && kBlockM % 16 == 0, "tiles are multiples of the mma shape");
  static constexpr int kSmemElems = (kBlockM + 2 * kBlockN) * kHeadDim;
  static constexpr int kSmemBytes = kSmemElems * int(sizeof(Element));
};

}  // namespace attnx::fmha

// How neighborhood-attention tiles arrive: 5-D TMA views of [B, X0, X1, X2, H, D] tensors (host)
// and the box loads of one multi-dimensional tile (device). Forward and backward share them.
#pragma once

#include <cuda.h>

#include <type_traits>

#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/cuda_host_adapter.hpp>

#include "../common/cuda_check.h"
#include "na_params.h"

namespace attnx::na {

// A tile lands as head-dim chunks of kChunk elements, one TMA box each: (chunk, tile axis 2,
// axis 1, batch x axis 0, head). The chunk is the width of the shared-memory swizzle atom the
// core's wgmma layouts use (128-byte rows; 64 bytes at head dim 32), so each box fills one
// contiguous (tile tokens) x kChunk slab of the K-major tile, swizzled exactly as the layout expects.
template <class Traits>
struct NaTmaBox {
  using Element = typename Traits::Element;
  static constexpr int kChunk = Traits::kHeadDim * (int)sizeof(Element) >= 128 ? 128 / (int)sizeof(Element)
                                                                               : Traits::kHeadDim;
  static constexpr int kChunks = Traits::kHeadDim / kChunk;
  static constexpr int kSwizzleBytes = kChunk * (int)sizeof(Element);
  static_assert(Traits::kHeadDim % kChunk == 0 && (kSwizzleBytes == 128 || kSwizzleBytes == 64),
                "head dims 32, 64, 128");
};

inline bool is_pow2(int x) { return x > 0 && (x & (x - 1)) == 0; }

// The launchers' shared check of sizes and windows: kInvalidArgument for impossible values,
// kSuccess with empty = true when there is nothing to compute (no batch, token or head).
inline Status na_check_geometry(const NaFwdParams& p, bool& empty) {
  int64_t tokens = 1;
  for (int a = 0; a < kAxes; ++a) {
    if (p.extent[a] < 0 || p.kernel_size[a] < 1 || p.stride[a] < 1 || p.stride[a] > p.kernel_size[a])
      return Status::kInvalidArgument;
    if (p.extent[a] > 0 && p.kernel_size[a] > p.extent[a]) return Status::kInvalidArgument;
    tokens *= p.extent[a];
  }
  if (p.batch < 0 || p.num_heads_q < 0) return Status::kInvalidArgument;
  empty = p.batch == 0 || tokens == 0 || p.num_heads_q == 0;
  return Status::kSuccess;
}

// The (chunk, axis 2, axis 1, batch x axis 0, head) view of a [B, X0, X1, X2, H, D] tensor. TMA
// has at most five dimensions, so batch and axis 0 share one: their strides must chain
// (batch stride = X0 * axis-0 stride), true of contiguous tensors and of q/k/v sliced from one
// qkv tensor. Extent-1 dimensions get a contiguous-style stride (any valid one would do).
// Traits: any core traits (element type and head dim); tile: the box, tokens per axis.
template <class Traits>
bool make_na_tma_view(cute::TmaDescriptor& desc, const void* ptr, const NaFwdParams& p, int heads,
                      int64_t batch_stride, const int64_t (&axis_stride)[kAxes], int64_t head_stride,
                      const int (&tile)[kAxes]) {
  using Element = typename Traits::Element;
  using Box = NaTmaBox<Traits>;
  constexpr int64_t kElem = sizeof(Element);
  int64_t merged = axis_stride[0];
  if (p.extent[0] == 1) merged = batch_stride;
  else if (p.batch > 1 && batch_stride != (int64_t)p.extent[0] * axis_stride[0]) return false;
  const uint64_t dims[5] = {(uint64_t)Traits::kHeadDim, (uint64_t)p.extent[2], (uint64_t)p.extent[1],
                            (uint64_t)p.batch * p.extent[0], (uint64_t)heads};
  const int64_t given[4] = {axis_stride[2], axis_stride[1], merged, head_stride};
  uint64_t strides[4];
  uint64_t natural = Traits::kHeadDim * kElem;
  for (int i = 0; i < 4; ++i) {
    const int64_t s = dims[i + 1] > 1 ? given[i] * kElem : (int64_t)natural;
    if (s <= 0 || s % 16 != 0 || s >= (1LL << 40)) return false;
    strides[i] = (uint64_t)s;
    natural = strides[i] * dims[i + 1];
  }
  const uint32_t box[5] = {(uint32_t)Box::kChunk, (uint32_t)tile[2], (uint32_t)tile[1], (uint32_t)tile[0], 1u};
  const uint32_t element_strides[5] = {1, 1, 1, 1, 1};
  const CUtensorMapDataType type = std::is_same_v<Element, cutlass::half_t> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                                            : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const CUtensorMapSwizzle swizzle = Box::kSwizzleBytes == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B;
  const CUresult r = CUTLASS_CUDA_DRIVER_WRAPPER_CALL(cuTensorMapEncodeTiled)(
      &desc, type, 5, const_cast<void*>(ptr), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

// One tile of kRows tokens into a K-major shared-memory tile: one box per head-dim chunk, each
// filling a contiguous kRows x kChunk slab.
template <class Traits, int kRows>
__device__ __forceinline__ void na_tma_load(const cute::TmaDescriptor& desc, uint64_t* barrier,
                                            typename Traits::Element* smem, const int (&origin)[kAxes], int batch,
                                            int extent0, int head) {
  using Box = NaTmaBox<Traits>;
  CUTLASS_PRAGMA_UNROLL
  for (int c = 0; c < Box::kChunks; ++c)
    cute::SM90_TMA_LOAD_5D::copy(&desc, barrier, static_cast<uint64_t>(cute::TMA::CacheHintSm90::EVICT_NORMAL),
                                 smem + c * (kRows * Box::kChunk), c * Box::kChunk, origin[2], origin[1],
                                 batch * extent0 + origin[0], head);
}

}  // namespace attnx::na

// TMA plumbing shared by the forward and backward kernels: the global q/k/v/dO views the tensor
// maps describe, and the parameters of their mbarrier pipelines.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/pipeline/pipeline.hpp>

namespace attnx::fmha {

// A [B, L, H, D] (dense) or [T, H, D] (packed) tensor as TMA sees it: (rows, head dim, heads,
// batch), head dim contiguous; packed inputs have batch 1.
template <typename Element, int kHeadDim>
struct QkvGmem {
  using Shape = cute::Shape<int32_t, int32_t, int32_t, int32_t>;
  using Stride = cute::Stride<int64_t, cute::_1, int64_t, int64_t>;
  using Tensor = decltype(cute::make_tensor(cute::make_gmem_ptr(static_cast<Element const*>(nullptr)), Shape{},
                                            Stride{}));

  static Tensor make(const void* ptr, int rows, int heads, int batches, int64_t row_stride, int64_t head_stride,
                     int64_t batch_stride, bool packed) {
    // A packed tensor has one batch; its stride is never used but must be a valid TMA stride.
    if (packed) batch_stride = (int64_t)rows * row_stride;
    return cute::make_tensor(cute::make_gmem_ptr(static_cast<Element const*>(ptr)),
                             cute::make_shape(int32_t(rows), int32_t(kHeadDim), int32_t(heads), int32_t(batches)),
                             cute::make_stride(row_stride, cute::_1{}, head_stride, batch_stride));
  }
};

// Warpgroup 0 produces (thread 0 leads, issuing every load), the consumer warpgroups consume.
template <class Pipeline>
__device__ typename Pipeline::Params tma_pipeline_params(uint32_t transaction_bytes, uint32_t num_consumers) {
  typename Pipeline::Params pp;
  pp.transaction_bytes = transaction_bytes;
  pp.role = threadIdx.x < 128 ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pp.is_leader = threadIdx.x == 0;
  pp.num_consumers = num_consumers;
  return pp;
}

}  // namespace attnx::fmha

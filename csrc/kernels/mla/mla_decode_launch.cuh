// Host launcher of one MLA decode instance (included by the generated instance files only):
// the TMA descriptor of the paged cache, the decode kernel over (query block, part, KV head) and
// the combine of split sequences.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include <cute/tensor.hpp>

#include "../common/cuda_check.h"
#include "../common/kernel_attributes.h"
#include "mla_combine.cuh"
#include "mla_decode_kernel.cuh"

namespace attnx::mla {

template <class Traits>
Status run_mla_decode(MlaDecodeParams p, cudaStream_t stream) {
  using Element = typename Traits::Element;
  using namespace cute;
  if (p.head_dim != Traits::kHeadDim || p.head_dim_v != Traits::kHeadDimV || p.page_size != Traits::kPage)
    return Status::kUnsupported;
  if (p.batch == 0 || p.seqlen_q == 0 || p.num_heads_q == 0) return Status::kSuccess;
  if (p.num_heads_k <= 0 || p.num_heads_q % p.num_heads_k || p.num_parts <= 0 || p.num_parts > 65535 ||
      p.num_heads_k > 65535)
    return Status::kInvalidArgument;
  const int rows = p.rows_per_group();
  const int num_m_blocks = (rows + Traits::kBlockM - 1) / Traits::kBlockM;
  // A cache without pages holds no keys: every sequence is empty (a TMA tensor cannot be empty).
  const int num_pages = p.num_pages > 0 ? p.num_pages : 1;
  if (p.num_pages == 0) p.max_pages = 0;

  // Several query blocks of one KV head read each page about together: keep it in L2 for them.
  p.kv_evict_first = num_m_blocks == 1;
  const int64_t row_stride = (int64_t)p.num_heads_k * Traits::kHeadDim;  // contiguous cache
  auto mKV = make_tensor(make_gmem_ptr(static_cast<Element const*>(p.kv)),
                         make_shape(int32_t(Traits::kPage), int32_t(Traits::kHeadDim), int32_t(p.num_heads_k),
                                    int32_t(num_pages)),
                         make_stride(row_stride, _1{}, int64_t(Traits::kHeadDim), row_stride * Traits::kPage));
  MlaDecodeKernelParams<Traits> kp{
      p,
      make_tma_copy(SM90_TMA_LOAD{}, mKV, take<0, 2>(typename Traits::SmemLayoutKV{}),
                    Shape<Int<Traits::kPage>, Int<Traits::kHeadDim>>{}, _1{}),
      mKV.shape(),
  };
  auto kernel = mla_decode_kernel<Traits>;
  static KernelAttributesOnce attributes;
  if (attributes.set(kernel, Traits::kSmemBytes) != cudaSuccess) return Status::kCudaError;
  kernel<<<dim3(num_m_blocks, p.num_parts, p.num_heads_k), Traits::kNumThreads, Traits::kSmemBytes, stream>>>(kp);
  if (cudaGetLastError() != cudaSuccess) return Status::kCudaError;

  // A sequence of more than kHeavyPieces pieces spans at least kHeavyPieces part boundaries, so
  // (num_parts - 1) / kHeavyPieces bounds the heavy sequences; two slots of heavy blocks share them.
  using Combine = MlaCombineShape<Traits::kHeadDimV>;
  const int max_heavy = std::min(p.batch, (p.num_parts - 1) / Combine::kHeavyPieces);
  const int heavy_slots = std::min(max_heavy, 2);
  const int64_t light_blocks = ((int64_t)p.batch * rows + Combine::kRowsPerBlock - 1) / Combine::kRowsPerBlock;
  const int64_t blocks = light_blocks + (int64_t)heavy_slots * rows * Combine::kQuarters;
  if (blocks >= (1LL << 31)) return Status::kInvalidArgument;
  mla_combine_kernel<Element, Traits::kHeadDimV>
      <<<dim3((unsigned)blocks, p.num_heads_k), Combine::kThreads, 0, stream>>>(p, heavy_slots);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace attnx::mla

// Host launcher of one fused neighborhood-attention backward instance (included by the generated
// instance files only): preprocess, main kernel, postprocess on one stream.
#pragma once

#include <cuda_runtime.h>

#include <cute/tensor.hpp>

#include "../common/cuda_check.h"
#include "../common/kernel_attributes.h"
#include "../fmha/bwd_persistent_grid.h"
#include "na_bwd_kernel.cuh"
#include "na_bwd_traits.h"

namespace attnx::na {

template <class Traits>
Status run_na_bwd(const NaBwdParams& p, cudaStream_t stream) {
  using Element = typename Traits::Element;
  bool empty = false;
  if (const Status geometry = na_check_geometry(p, empty); geometry != Status::kSuccess || empty) return geometry;
  if (p.workspace == nullptr || p.num_heads_q > 65535 || (int64_t)p.batch * p.extent[0] >= (1LL << 31))
    return Status::kInvalidArgument;

  NaBwdKernelParams<Traits> kp{};
  kp.p = p;
  const Status tiles = na_bwd_tiles(p, kp.p.q_tile, kp.p.kv_tile);
  if (tiles != Status::kSuccess) return tiles;
  const int64_t num_q_tiles = na_num_tiles(p, kp.p.q_tile), num_kv_tiles = na_num_tiles(p, kp.p.kv_tile);
  if (num_q_tiles * p.batch >= (1LL << 31) || num_kv_tiles * p.batch >= (1LL << 31)) return Status::kInvalidArgument;
  kp.num_q_tiles = (int)num_q_tiles, kp.num_kv_tiles = (int)num_kv_tiles;
  if (!make_na_tma_view<Traits>(kp.tma_q, p.q, p, p.num_heads_q, p.q_batch_stride, p.q_axis_stride, p.q_head_stride,
                                kp.p.q_tile) ||
      !make_na_tma_view<Traits>(kp.tma_do, p.dout, p, p.num_heads_q, p.do_batch_stride, p.do_axis_stride,
                                p.do_head_stride, kp.p.q_tile) ||
      !make_na_tma_view<Traits>(kp.tma_k, p.k, p, p.num_heads_k, p.k_batch_stride, p.k_axis_stride, p.k_head_stride,
                                kp.p.kv_tile) ||
      !make_na_tma_view<Traits>(kp.tma_v, p.v, p, p.num_heads_k, p.v_batch_stride, p.v_axis_stride, p.v_head_stride,
                                kp.p.kv_tile))
    return Status::kUnsupported;  // strides TMA cannot describe: the caller makes the tensors contiguous

  const dim3 row_grid((unsigned)(num_q_tiles * p.batch), p.num_heads_q);  // a block per (Q tile, head)
  na_bwd_preprocess_kernel<Element, Traits::kHeadDim><<<row_grid, 256, 0, stream>>>(kp.p, kp.num_q_tiles);
  auto kernel = na_bwd_kernel<Traits>;
  static KernelAttributesOnce attributes;
  if (attributes.set(kernel, kNaBwdSmemBytes<Traits>) != cudaSuccess) return Status::kCudaError;
  const int64_t num_work = num_kv_tiles * p.batch * p.num_heads_k;
  if (num_work >= (1LL << 31)) return Status::kInvalidArgument;
  int num_ctas = 0;
  if (fmha::bwd_persistent_ctas(num_work, num_ctas) != cudaSuccess) return Status::kCudaError;
  kernel<<<num_ctas, Traits::kNumThreads, kNaBwdSmemBytes<Traits>, stream>>>(kp);
  na_bwd_postprocess_kernel<Element, Traits::kHeadDim><<<row_grid, 256, 0, stream>>>(kp.p, kp.num_q_tiles);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace attnx::na

// Host launcher of one forward instance (included by the generated instance files only): builds
// the TMA descriptors for dense or packed inputs and launches the kernel.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include <cute/tensor.hpp>

#include "../common/cuda_check.h"
#include "../common/device_sms.h"
#include "../common/kernel_attributes.h"
#include "fmha_fwd_config.h"
#include "fmha_fwd_persistent_kernel.cuh"

namespace attnx::fmha {

// Every query of a problem without keys: out = 0, lse = -inf (a TMA descriptor cannot describe
// an empty tensor, so this case never reaches the main kernel).
template <typename Element>
__global__ void fmha_fwd_no_keys_kernel(FmhaFwdParams p, int batches, int rows) {
  const int64_t total = (int64_t)batches * rows * p.num_heads_q;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int h = i % p.num_heads_q, r = (i / p.num_heads_q) % rows, b = i / ((int64_t)p.num_heads_q * rows);
    Element* o = static_cast<Element*>(p.out) + b * p.o_batch_stride + r * p.o_row_stride + h * p.o_head_stride;
    for (int d = 0; d < p.head_dim; ++d) o[d] = Element(0.f);
    p.lse[i] = -INFINITY;
  }
}

template <class Traits, bool kWithBlockSparse = true>
Status run_fmha_fwd(const FmhaFwdParams& p, cudaStream_t stream) {
  using Element = typename Traits::Element;
  using namespace cute;
  const bool packed = p.cu_seqlens_q != nullptr;
  const int rows_q = packed ? p.total_q : p.seqlen_q, rows_k = packed ? p.total_k : p.seqlen_k;
  const int batches = packed ? 1 : p.batch;
  if (p.batch == 0 || rows_q == 0 || p.num_heads_q == 0) return Status::kSuccess;
  const int64_t num_m_blocks = (p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM;
  if (num_m_blocks == 0 || p.num_heads_q > 65535 || num_m_blocks * p.batch >= (1LL << 31))
    return Status::kInvalidArgument;  // (max_seqlen_q = 0 with rows present is malformed)
  if (rows_k == 0) {
    fmha_fwd_no_keys_kernel<Element><<<264, 256, 0, stream>>>(p, batches, rows_q);
    return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
  }

  using Gmem = typename Traits::Gmem;
  auto mQ = Gmem::make(p.q, rows_q, p.num_heads_q, batches, p.q_row_stride, p.q_head_stride, p.q_batch_stride, packed);
  auto mK = Gmem::make(p.k, rows_k, p.num_heads_k, batches, p.k_row_stride, p.k_head_stride, p.k_batch_stride, packed);
  auto mV = Gmem::make(p.v, rows_k, p.num_heads_k, batches, p.v_row_stride, p.v_head_stride, p.v_batch_stride, packed);
  using BlockQ = Shape<Int<Traits::kBlockM>, Int<Traits::kHeadDim>>;
  using BlockKV = Shape<Int<Traits::kBlockN>, Int<Traits::kHeadDim>>;
  FmhaFwdKernelParams<Traits> kp{
      p,
      make_tma_copy(SM90_TMA_LOAD{}, mQ, typename Traits::SmemLayoutQ{}, BlockQ{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, mK, take<0, 2>(typename Traits::SmemLayoutKV{}), BlockKV{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, mV, take<0, 2>(typename Traits::SmemLayoutKV{}), BlockKV{}, _1{}),
      mQ.shape(),
      mK.shape(),
  };

  const bool block_sparse = p.kv_block_index != nullptr;
  if (block_sparse && (packed || p.causal || p.window_left >= 0 || p.window_right >= 0 ||
                       p.bs_q_block != Traits::kBlockM || p.bs_kv_block != Traits::kBlockN))
    return Status::kUnsupported;
  if (block_sparse && !kWithBlockSparse) return Status::kUnsupported;
  // A zeroed tile counter from the caller selects the persistent grid (one CTA per SM, tiles
  // from the DynamicTileScheduler); without one, one CTA per work tile.
  const int64_t num_tiles = num_m_blocks * p.batch * p.num_heads_q;
  if (p.tile_counter != nullptr && num_tiles < (1LL << 31)) {
    auto kernel = fmha_fwd_persistent_kernel<Traits, false>;
    if constexpr (kWithBlockSparse)
      if (block_sparse) kernel = fmha_fwd_persistent_kernel<Traits, true>;
    constexpr int kSmem = kFwdPersistentSmemBytes<Traits>;
    static KernelAttributesOnce attributes[2];
    if (attributes[block_sparse].set(kernel, kSmem, Traits::kMinBlocksPerSm > 1) != cudaSuccess)
      return Status::kCudaError;
    int num_sms = 0;
    if (current_device_sms(num_sms) != cudaSuccess) return Status::kCudaError;
    const int grid = (int)std::min<int64_t>(num_tiles, (int64_t)num_sms * Traits::kMinBlocksPerSm);
    kernel<<<grid, Traits::kNumThreads, kSmem, stream>>>(kp);
    return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
  }
  auto kernel = fmha_fwd_kernel<Traits, false>;
  if constexpr (kWithBlockSparse)
    if (block_sparse) kernel = fmha_fwd_kernel<Traits, true>;
  static KernelAttributesOnce attributes[2];  // per kernel: the range walk, the block-sparse lists
  if (attributes[block_sparse].set(kernel, Traits::kSmemBytes, Traits::kMinBlocksPerSm > 1) != cudaSuccess)
    return Status::kCudaError;
  const dim3 grid((unsigned)(num_m_blocks * p.batch), p.num_heads_q);
  kernel<<<grid, Traits::kNumThreads, Traits::kSmemBytes, stream>>>(kp);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

// One call's tile configuration (FmhaFwdConfig): short problems run the small CTAs. Packed
// inputs give their longest sequences as seqlen_q / seqlen_k.
template <class Config>
Status run_fmha_fwd_config(const FmhaFwdParams& p, cudaStream_t stream) {
  const int longest = p.seqlen_q > p.seqlen_k ? p.seqlen_q : p.seqlen_k;
  if (p.kv_block_index == nullptr && longest <= Config::kShortMaxSeqlen)
    return run_fmha_fwd<typename Config::ShortTraits, false>(p, stream);
  return run_fmha_fwd<typename Config::Traits>(p, stream);
}

}  // namespace attnx::fmha

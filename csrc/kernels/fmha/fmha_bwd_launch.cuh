// Host launcher of one backward instance: preprocess, main kernel, postprocess on one stream.
#pragma once

#include <cuda_runtime.h>

#include <cute/tensor.hpp>

#include "../common/cuda_check.h"
#include "../common/kernel_attributes.h"
#include "bwd_persistent_grid.h"
#include "fmha_bwd_kernel.cuh"
#include "fmha_bwd_prepost.cuh"

namespace attnx::fmha {

template <class Traits>
Status run_fmha_bwd(const FmhaBwdParams& p, cudaStream_t stream) {
  using Element = typename Traits::Element;
  using namespace cute;
  const bool packed = p.cu_seqlens_q != nullptr;
  const int rows_q = packed ? p.total_q : p.seqlen_q, rows_k = packed ? p.total_k : p.seqlen_k;
  const int batches = packed ? 1 : p.batch;
  if (p.batch == 0 || p.num_heads_q == 0 || (rows_q == 0 && rows_k == 0)) return Status::kSuccess;
  const int64_t row_blocks = round_up_rows(p.seqlen_q) / kPrepostRowsPerBlock, num_n_blocks = (p.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN;
  if (row_blocks == 0 || num_n_blocks == 0 || p.num_heads_q > 65535 || p.workspace == nullptr ||
      p.ws_rows < fmha_bwd_ws_rows(p) ||
      row_blocks * p.batch >= (1LL << 31) || num_n_blocks * p.batch >= (1LL << 31))
    return Status::kInvalidArgument;
  if (rows_q == 0 || rows_k == 0) return Status::kUnsupported;  // the caller fills zeros (no TMA on empty tensors)

  // grid.x = (batch, block of kPrepostRowsPerBlock rows); the batch is not a grid dimension (65535
  // limit). The preprocess also zeroes the dq_accum rows the main kernel adds to (no memset).
  const dim3 pre_grid((unsigned)(row_blocks * p.batch), p.num_heads_q);
  fmha_bwd_preprocess_kernel<Element, Traits::kHeadDim><<<pre_grid, 256, 0, stream>>>(p);

  using Gmem = typename Traits::Gmem;
  auto mQ = Gmem::make(p.q, rows_q, p.num_heads_q, batches, p.q_row_stride, p.q_head_stride, p.q_batch_stride, packed);
  auto mdO = Gmem::make(p.dout, rows_q, p.num_heads_q, batches, p.do_row_stride, p.do_head_stride, p.do_batch_stride,
                        packed);
  auto mK = Gmem::make(p.k, rows_k, p.num_heads_k, batches, p.k_row_stride, p.k_head_stride, p.k_batch_stride, packed);
  auto mV = Gmem::make(p.v, rows_k, p.num_heads_k, batches, p.v_row_stride, p.v_head_stride, p.v_batch_stride, packed);
  using BlockQ = Shape<typename Traits::BM, typename Traits::D>;
  using BlockKV = Shape<typename Traits::BN, typename Traits::D>;
  auto sQ = take<0, 2>(typename Traits::SmemLayoutQ{});
  FmhaBwdKernelParams<Traits> kp{
      p,
      make_tma_copy(SM90_TMA_LOAD{}, mQ, sQ, BlockQ{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, mdO, sQ, BlockQ{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, mK, typename Traits::SmemLayoutKV{}, BlockKV{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, mV, typename Traits::SmemLayoutKV{}, BlockKV{}, _1{}),
      mQ.shape(),
      mK.shape(),
  };
  const bool block_sparse = p.kv_block_index != nullptr;
  if (block_sparse) {
    // The forward's tiles must be the backward's: KV tiles of kBlockN, Q tiles of whole 64-row steps.
    if (packed || p.causal || p.window_left >= 0 || p.window_right >= 0 || p.bs_lists == nullptr ||
        p.bs_kv_block != Traits::kBlockN || p.bs_q_block <= 0 || p.bs_q_block % kBwdBlockM != 0)
      return Status::kUnsupported;
    const BsListShape sh(p);
    if (sh.sets() > 65535) return Status::kInvalidArgument;
    const dim3 lists_grid((unsigned)((sh.kv_tiles + 3) / 4), (unsigned)sh.sets());  // a warp per KV tile
    block_sparse_transpose_kernel<Traits::kBlockN><<<lists_grid, 128, 0, stream>>>(p);
  }
  auto kernel = block_sparse ? fmha_bwd_kernel<Traits, true> : fmha_bwd_kernel<Traits, false>;
  static KernelAttributesOnce attributes[2];  // per kernel: the range walk, the block-sparse lists
  if (attributes[block_sparse].set(kernel, Traits::kSmemBytes) != cudaSuccess) return Status::kCudaError;
  const int64_t num_tiles = num_n_blocks * p.batch * p.num_heads_k;
  if (num_tiles >= (1LL << 31)) return Status::kInvalidArgument;
  int num_ctas = 0;
  if (bwd_persistent_ctas(num_tiles, num_ctas) != cudaSuccess) return Status::kCudaError;
  kernel<<<num_ctas, Traits::kNumThreads, Traits::kSmemBytes, stream>>>(kp);

  const dim3 post_grid((unsigned)(row_blocks * p.batch), p.num_heads_q);  // same row blocks as pre
  fmha_bwd_postprocess_kernel<Element, Traits::kHeadDim><<<post_grid, 256, 0, stream>>>(p);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace attnx::fmha

// Hopper forward fused MHA: one CTA per (Q tile, head, batch), warp-specialised.
//
//   warpgroup 0 (producer): one thread issues TMA loads (Q once, K/V per visited tile) that
//                           complete on mbarriers; the warpgroup gives its registers away.
//   warpgroups 1.. (consumers): 64 query rows each; wgmma S = Q K^T, mask, online softmax,
//                           wgmma O += P V from registers; then the epilogue.
// The iteration space is a walk over KV tiles (a range from the Mask, or a block-sparse list)
// plus the Mask's element masking; the addressing (dense or packed) is VarlenBlockInfo's.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "fmha_fwd_epilogue.cuh"
#include "fmha_fwd_mainloop.cuh"
#include "fmha_mask.cuh"

namespace attnx::fmha {

// The KV tiles Q tile m_block visits: the mask's range, or the block-sparse list.
template <class Traits, bool kBlockSparse, class Mask>
__device__ auto fmha_fwd_walk(const FmhaFwdParams& p, const Mask& mask, const VarlenBlockInfo& info, int batch,
                              int head, int m_block) {
  if constexpr (kBlockSparse) {
    const int count = p.kv_block_count[batch * p.bs_count_batch_stride + head * p.bs_count_head_stride +
                                       m_block * p.bs_count_tile_stride];
    const int num_tiles = (info.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN;
    return KvTileList{p.kv_block_index + batch * p.bs_index_batch_stride + head * p.bs_index_head_stride +
                          m_block * p.bs_index_tile_stride,
                      num_tiles > 0 ? min(max(count, 0), p.bs_max_count) : 0, num_tiles};
  } else {
    KvTileRange range;
    mask.n_block_range(m_block, range.n_min, range.n_max);
    return range;
  }
}

template <class Traits, bool kBlockSparse>
__global__ void __launch_bounds__(Traits::kNumThreads, Traits::kMinBlocksPerSm)
    fmha_fwd_kernel(const __grid_constant__ FmhaFwdKernelParams<Traits> kp) {
  using Pipeline = typename Traits::Pipeline;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  extern __shared__ char smem_buf[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem_buf);
  const FmhaFwdParams& p = kp.p;

  // grid.x = (batch, Q tile) with the tiles of one sequence consecutive (they share K/V in L2);
  // the batch is not a grid dimension of its own, whose 65535 limit packed inputs can exceed.
  // Causal tiles grow with m: launch the longest first.
  const int num_m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;
  const int m_idx = blockIdx.x % num_m_blocks, batch = blockIdx.x / num_m_blocks;
  const int m_block = p.causal ? num_m_blocks - 1 - m_idx : m_idx;
  const int head = blockIdx.y;
  const VarlenBlockInfo info(p, batch);
  if (m_block * kBlockM >= info.seqlen_q) return;  // packed: past this sequence's end
  const WindowMask<kBlockM, kBlockN> mask(info.seqlen_q, info.seqlen_k, p.window_left, p.window_right, p.causal);
  const auto walk = fmha_fwd_walk<Traits, kBlockSparse>(p, mask, info, batch, head, m_block);
  const bool has_keys = walk.count() > 0;

  const int wg = threadIdx.x / 128;
  const auto pp = tma_pipeline_params<Pipeline>(Traits::kTmaBytesKV, Traits::kNumMmaThreads);
  if (threadIdx.x == 0) cutlass::arch::ClusterTransactionBarrier::init(&ss.barrier_q, 1);
  Pipeline pipe_k(ss.pipeline_k, pp, Shape<_1, _1, _1>{});
  Pipeline pipe_v(ss.pipeline_v, pp, Shape<_1, _1, _1>{});
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  if (wg == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x == 0 && has_keys) {
      cute::prefetch_tma_descriptor(kp.tma_q.get_tma_descriptor());
      cute::prefetch_tma_descriptor(kp.tma_k.get_tma_descriptor());
      cute::prefetch_tma_descriptor(kp.tma_v.get_tma_descriptor());
      const int head_k = head / (p.num_heads_q / p.num_heads_k);
      auto write = cutlass::make_producer_start_state<Pipeline>();
      fmha_fwd_load<Traits>(kp, ss, pipe_k, pipe_v, info, m_block, head, head_k, walk, write);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int mma_tid = threadIdx.x - 128;
    typename Traits::TiledMmaPV mma_pv;
    Tensor tOrO = partition_fragment_C(mma_pv, select<0, 1>(typename Traits::TileShapePV{}));
    OnlineSoftmax<2> softmax(p.scale);
    if (has_keys) {
      typename Traits::PipelineState read;  // stage 0, phase 0
      fmha_fwd_mma<Traits>(ss, pipe_k, pipe_v, mask, m_block, walk, mma_tid, tOrO, softmax, read);
    } else {
      clear(tOrO);
    }
    using Element = typename Traits::Element;
    const int64_t o_batch = p.cu_seqlens_q != nullptr ? 0 : batch * p.o_batch_stride;
    Element* o_seq = static_cast<Element*>(p.out) + o_batch + (int64_t)info.offset_q * p.o_row_stride +
                     (int64_t)head * p.o_head_stride;
    float* lse_seq = p.lse + info.out_row0(p, batch) * p.num_heads_q + head;
    const SeqRowMap<Element> rows{o_seq, p.o_row_stride, lse_seq, p.num_heads_q, m_block * kBlockM, info.seqlen_q};
    fmha_fwd_store<Traits>(ss.q.data(), tOrO, softmax, rows, mma_tid);
  }
}

}  // namespace attnx::fmha

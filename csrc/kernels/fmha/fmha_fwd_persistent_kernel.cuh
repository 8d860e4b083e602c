// Persistent variant of the forward (fmha_fwd_kernel.cuh): one CTA per SM walks work tiles handed
// out by the DynamicTileScheduler, so one tile's epilogue overlaps the next tile's Q and K/V loads
// and a CTA's set-up (barriers, descriptors) is paid once per SM instead of once per tile.
//
// Work tile t is the CTA blockIdx = (t % tiles_x, t / tiles_x) of the one-CTA-per-tile grid, so
// tiles run in the same order (the Q tiles of one sequence together, causal ones longest first).
// Across tiles the producer's and the consumers' pipeline states run on; Q's barrier and the
// q_empty barrier (consumers done with Q's bytes) count phases per tile with keys only, and the
// producer waits for every q_empty phase in order before the next Q load, so neither side can
// run two phases ahead of the other's wait (a parity wait would then alias).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "dynamic_tile_scheduler.cuh"
#include "fmha_fwd_kernel.cuh"

namespace attnx::fmha {

template <class Traits>
struct FmhaFwdPersistentSmem {
  // O is staged here rather than in Q's bytes where shared memory allows (kOwnO), so the next
  // tile's Q can load during the epilogue; otherwise the consumers release Q after the epilogue.
  static constexpr int kBase = (Traits::kSmemBytes + 1023) / 1024 * 1024;
  static constexpr int kOBytes = cosize_v<typename Traits::SmemLayoutQ> * sizeof(typename Traits::Element);
  static constexpr bool kOwnO = kBase + kOBytes + 1024 <= 227 * 1024;
  cute::array_aligned<typename Traits::Element, kOwnO ? cosize_v<typename Traits::SmemLayoutQ> : 1, 1024> o;
  uint64_t q_empty;
  TileHandoffSmem handoff;
};
template <class Traits>
constexpr int kFwdPersistentSmemBytes = FmhaFwdPersistentSmem<Traits>::kBase + (int)sizeof(FmhaFwdPersistentSmem<Traits>);

// Register split (setmaxnreg): the persistent producer also walks the tiles (scheduler, tile
// decode, walk) and spilled at the single-tile kernel's 24 registers; it takes 56 where the
// consumers still fit (ptxas: D128 128 x 128 consumers fit 224), else keeps the traits' split.
template <class Traits>
struct FwdPersistentRegs {
  static constexpr bool kRoomy = Traits::kBlockN <= 128 && Traits::kHeadDim >= 128 && Traits::kMinBlocksPerSm == 1;
  static constexpr int kProducer = kRoomy ? 56 : Traits::kProducerRegs;
  static constexpr int kConsumer = kRoomy ? Traits::kConsumerRegs - 16 : Traits::kConsumerRegs;
  static_assert(128 * kProducer + Traits::kNumMmaThreads * kConsumer <=
                128 * Traits::kProducerRegs + Traits::kNumMmaThreads * Traits::kConsumerRegs);
};

// Where work tile t lies and what it walks (the same on the producer and the consumer side).
template <class Traits, bool kBlockSparse>
struct FwdWorkTile {
  int m_block, batch, head;
  VarlenBlockInfo info;
  WindowMask<Traits::kBlockM, Traits::kBlockN> mask;
  __device__ FwdWorkTile(const FmhaFwdParams& p, int num_m_blocks, int t)
      : batch((t % (num_m_blocks * p.batch)) / num_m_blocks),
        head(t / (num_m_blocks * p.batch)),
        info(p, batch),
        mask(info.seqlen_q, info.seqlen_k, p.window_left, p.window_right, p.causal) {
    const int m_idx = t % num_m_blocks;
    m_block = p.causal ? num_m_blocks - 1 - m_idx : m_idx;
  }
  __device__ bool has_rows() const { return m_block * Traits::kBlockM < info.seqlen_q; }
  __device__ auto walk(const FmhaFwdParams& p) const {
    return fmha_fwd_walk<Traits, kBlockSparse>(p, mask, info, batch, head, m_block);
  }
};

template <class Traits, bool kBlockSparse>
__global__ void __launch_bounds__(Traits::kNumThreads, Traits::kMinBlocksPerSm)
    fmha_fwd_persistent_kernel(const __grid_constant__ FmhaFwdKernelParams<Traits> kp) {
  using Pipeline = typename Traits::Pipeline;
  using Smem = FmhaFwdPersistentSmem<Traits>;
  using Scheduler = DynamicTileScheduler<Traits::kNumMmaThreads>;
  // 1 KB of each SM's 228 KB is reserved per resident CTA.
  static_assert(Traits::kMinBlocksPerSm * (kFwdPersistentSmemBytes<Traits> + 1024) <= 228 * 1024,
                "resident CTAs exceed the SM's shared memory");
  extern __shared__ char smem_buf[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem_buf);
  auto& ps = *reinterpret_cast<Smem*>(smem_buf + Smem::kBase);
  const FmhaFwdParams& p = kp.p;
  const int num_m_blocks = (p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM;
  const int num_tiles = num_m_blocks * p.batch * p.num_heads_q;
  const Scheduler scheduler{&ps.handoff, p.tile_counter, num_tiles};

  const int wg = threadIdx.x / 128;
  const auto pp = tma_pipeline_params<Pipeline>(Traits::kTmaBytesKV, Traits::kNumMmaThreads);
  if (threadIdx.x == 0) {
    cutlass::arch::ClusterTransactionBarrier::init(&ss.barrier_q, 1);
    cutlass::arch::ClusterBarrier::init(&ps.q_empty, Traits::kNumMmaThreads);
    Scheduler::init(&ps.handoff);
  }
  Pipeline pipe_k(ss.pipeline_k, pp, Shape<_1, _1, _1>{});
  Pipeline pipe_v(ss.pipeline_v, pp, Shape<_1, _1, _1>{});
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  if (wg == 0) {
    cutlass::arch::warpgroup_reg_dealloc<FwdPersistentRegs<Traits>::kProducer>();
    if (threadIdx.x == 0) {
      cute::prefetch_tma_descriptor(kp.tma_q.get_tma_descriptor());
      cute::prefetch_tma_descriptor(kp.tma_k.get_tma_descriptor());
      cute::prefetch_tma_descriptor(kp.tma_v.get_tma_descriptor());
      auto write = cutlass::make_producer_start_state<Pipeline>();
      int kq = 0;  // tiles with keys so far (Q loads)
      for (int t = blockIdx.x, j = 0; t < num_tiles; ++j) {
        const int next = scheduler.publish_next(j);
        const FwdWorkTile<Traits, kBlockSparse> tile(p, num_m_blocks, t);
        if (tile.has_rows()) {
          const auto walk = tile.walk(p);
          if (walk.count() > 0) {
            if (kq > 0) cutlass::arch::ClusterBarrier::wait(&ps.q_empty, (kq - 1) & 1);
            const int head_k = tile.head / (p.num_heads_q / p.num_heads_k);
            fmha_fwd_load<Traits>(kp, ss, pipe_k, pipe_v, tile.info, tile.m_block, tile.head, head_k, walk, write);
            ++kq;
          }
        }
        t = next;
      }
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<FwdPersistentRegs<Traits>::kConsumer>();
    using Element = typename Traits::Element;
    const int mma_tid = threadIdx.x - 128;
    typename Traits::TiledMmaPV mma_pv;
    Tensor tOrO = partition_fragment_C(mma_pv, select<0, 1>(typename Traits::TileShapePV{}));
    typename Traits::PipelineState read;  // stage 0, phase 0
    int kq = 0;
    for (int t = blockIdx.x, j = 0; t < num_tiles; ++j) {
      const FwdWorkTile<Traits, kBlockSparse> tile(p, num_m_blocks, t);
      if (tile.has_rows()) {
        const auto walk = tile.walk(p);
        const int64_t o_batch = p.cu_seqlens_q != nullptr ? 0 : tile.batch * p.o_batch_stride;
        Element* o_seq = static_cast<Element*>(p.out) + o_batch + (int64_t)tile.info.offset_q * p.o_row_stride +
                         (int64_t)tile.head * p.o_head_stride;
        float* lse_seq = p.lse + tile.info.out_row0(p, tile.batch) * p.num_heads_q + tile.head;
        const SeqRowMap<Element> rows{o_seq, p.o_row_stride, lse_seq, p.num_heads_q, tile.m_block * Traits::kBlockM,
                                      tile.info.seqlen_q};
        const bool has_keys = walk.count() > 0;
        if (has_keys) {
          OnlineSoftmax<2> softmax(p.scale);
          // The ping-pong turns run on across tiles: the last warpgroup's final pass of one tile
          // releases the first warpgroup for the next, so only the first tile starts them.
          fmha_fwd_mma<Traits>(ss, pipe_k, pipe_v, tile.mask, tile.m_block, walk, mma_tid, tOrO, softmax, read,
                               kq & 1, /*start_turns=*/kq == 0);
          if constexpr (Smem::kOwnO) cutlass::arch::ClusterBarrier::arrive(&ps.q_empty);
          fmha_fwd_store<Traits>(Smem::kOwnO ? ps.o.data() : ss.q.data(), tOrO, softmax, rows, mma_tid);
          // Without a buffer of its own, O went through Q's bytes: they are free once every
          // consumer thread has read its rows back.
          if constexpr (!Smem::kOwnO) cutlass::arch::ClusterBarrier::arrive(&ps.q_empty);
        } else {
          // Not staged: Q's bytes may already hold the next tile's Q.
          fmha_fwd_store_no_keys<Traits>(rows, mma_tid);
        }
        kq += has_keys;
      }
      t = scheduler.receive_next(j);
    }
  }
}

}  // namespace attnx::fmha

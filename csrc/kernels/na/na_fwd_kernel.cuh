// Fused neighborhood-attention forward on the Hopper FMHA core: one CTA per (multi-dimensional Q
// tile, head), warp-specialised exactly as fmha_fwd_kernel.cuh. What differs is the iteration
// space and the addressing:
//   - the producer loads Q and each visited KV tile with 5-D TMA boxes straight from
//     [B, *spatial, H, D] (no token permutation in memory), see NaTmaBox;
//   - the walk is the box of KV tiles meeting the union of the Q tile's neighbourhoods;
//   - NaMask masks inside partly visible tiles; fully visible tiles skip the element mask;
//   - the epilogue stores rows through NaRowMap.
#pragma once

#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "../fmha/fmha_fwd_epilogue.cuh"
#include "../fmha/dynamic_tile_scheduler.cuh"
#include "../fmha/fmha_fwd_mainloop.cuh"
#include "na_fwd_traits.h"
#include "na_tile_map.cuh"
#include "na_tma.cuh"

namespace attnx::na {

using namespace cute;

// Shared memory: the core's storage, then this kernel's own (NaFwdSmem).
template <class Traits>
struct NaFwdSmem {
  NaMaskSmem<Traits::kBlockM, Traits::kBlockN> mask;
  // O is staged here, not in Q's bytes, so the next work tile's Q can load during the epilogue.
  cute::array_aligned<typename Traits::Element, cosize_v<typename Traits::SmemLayoutQ>, 1024> o;
  uint64_t q_empty;  // consumers are done reading Q (phase per work tile)
  fmha::TileHandoffSmem handoff;  // the dynamic scheduler's (p.tile_counter set)
};
template <class Traits>
constexpr int kNaSmemOffset = (Traits::kSmemBytes + 1023) / 1024 * 1024;
template <class Traits>
constexpr int kNaSmemBytes = kNaSmemOffset<Traits> + (int)sizeof(NaFwdSmem<Traits>);
// 1 KB of each SM's 228 KB is reserved per resident CTA.
template <class Traits>
constexpr bool kNaSmemFits = Traits::kMinBlocksPerSm * (kNaSmemBytes<Traits> + 1024) <= 228 * 1024;
// Named barrier of the consumer warpgroups (ids 1-2: epilogue, 4-5: ping-pong scheduler).
constexpr int kColumnSetsBarrier = 3;

template <class Traits>
struct NaFwdKernelParams {
  NaFwdParams p;
  // (chunk, axis 2, axis 1, batch x axis 0, head) views of q, k, v (na_fwd_launch.cuh).
  cute::TmaDescriptor tma_q, tma_k, tma_v;
  int num_q_tiles;  // per (batch, head)
  int num_work;     // work tiles: (head, batch, Q tile), the Q tiles of one head consecutive
};

// Work tile w of the persistent grid: its head and Q tile.
struct NaWork {
  int head;
  NaQTile qt;
  __device__ NaWork(const NaFwdParams& p, const NaTileShape& qs, int num_q_tiles, int w)
      : head(w / (p.batch * num_q_tiles)), qt(p, qs, w % (p.batch * num_q_tiles)) {}
};

// One thread issues everything for a work tile: Q (once the consumers are done with the previous
// tile's), then K and V of each visited tile (separate pipelines, so S = Q K^T starts before V has
// landed). `write` carries the pipeline state from one work tile to the next.
template <class Traits>
__device__ void na_fwd_load(const NaFwdKernelParams<Traits>& kp, typename Traits::SharedStorage& ss,
                            NaFwdSmem<Traits>& ns, typename Traits::Pipeline& pipe_k, typename Traits::Pipeline& pipe_v,
                            typename Traits::PipelineState& write, int n, const NaQTile& qt,
                            const NaTileShape& kv_shape, const NaTileWalk& walk, int head, int head_k) {
  static_assert(Traits::kBlockM == Traits::kBlockN, "one slab size for Q and KV tiles");
  const int extent0 = kp.p.extent[0];
  if (n > 0) cutlass::arch::ClusterBarrier::wait(&ns.q_empty, (n - 1) & 1);
  cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&ss.barrier_q, Traits::kTmaBytesQ);
  na_tma_load<Traits, Traits::kBlockM>(kp.tma_q, &ss.barrier_q, ss.q.data(), qt.origin, qt.batch, extent0, head);
  constexpr int kStageElems = Traits::kBlockN * Traits::kHeadDim;
  const int count = walk.count();
  for (int i = 0; i < count; ++i) {
    const NaKvTile t = walk.tile(i);
    int origin[kAxes];
    CUTLASS_PRAGMA_UNROLL
    for (int a = 0; a < kAxes; ++a) origin[a] = t.t[a] * kv_shape.dim[a];
    pipe_k.producer_acquire(write);
    na_tma_load<Traits, Traits::kBlockN>(kp.tma_k, pipe_k.producer_get_barrier(write), ss.k.data() + write.index() * kStageElems,
                        origin, qt.batch, extent0, head_k);
    pipe_v.producer_acquire(write);
    na_tma_load<Traits, Traits::kBlockN>(kp.tma_v, pipe_v.producer_get_barrier(write), ss.v.data() + write.index() * kStageElems,
                        origin, qt.batch, extent0, head_k);
    ++write;
  }
}

// A CTA walks work tiles from blockIdx.x on. kDynamic (the launcher's choice when p.tile_counter
// is set): a persistent grid whose next tiles come from the DynamicTileScheduler, the next tile's
// K/V, and during the epilogue its Q, loading while the current tile finishes. Otherwise one CTA
// per work tile: the loop (next = w + gridDim.x) runs once.
template <class Traits, bool kDynamic = false>
__global__ void __launch_bounds__(Traits::kNumThreads, Traits::kMinBlocksPerSm)
    na_fwd_kernel(const __grid_constant__ NaFwdKernelParams<Traits> kp) {
  static_assert(kNaSmemFits<Traits>, "resident CTAs exceed the SM's shared memory");
  using Pipeline = typename Traits::Pipeline;
  using Element = typename Traits::Element;
  extern __shared__ char smem_buf[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem_buf);
  auto& ns = *reinterpret_cast<NaFwdSmem<Traits>*>(smem_buf + kNaSmemOffset<Traits>);
  const NaFwdParams& p = kp.p;

  const NaTileShape q_shape(p.q_tile), kv_shape(p.kv_tile);
  NaAxis axis[kAxes];
  CUTLASS_PRAGMA_UNROLL
  for (int a = 0; a < kAxes; ++a) axis[a] = NaAxis{p.extent[a], p.kernel_size[a], p.stride[a], p.causal[a]};

  const int wg = threadIdx.x / 128;
  const auto pp = fmha::tma_pipeline_params<Pipeline>(Traits::kTmaBytesKV, Traits::kNumMmaThreads);
  using Scheduler = fmha::DynamicTileScheduler<Traits::kNumMmaThreads>;
  constexpr bool dynamic = kDynamic;  // a template parameter: the scheduler's state costs registers
  const Scheduler scheduler{&ns.handoff, p.tile_counter, kp.num_work};
  if (threadIdx.x == 0) {
    cutlass::arch::ClusterTransactionBarrier::init(&ss.barrier_q, 1);
    cutlass::arch::ClusterBarrier::init(&ns.q_empty, Traits::kNumMmaThreads);
    if constexpr (dynamic) Scheduler::init(&ns.handoff);
  }
  Pipeline pipe_k(ss.pipeline_k, pp, Shape<_1, _1, _1>{});
  Pipeline pipe_v(ss.pipeline_v, pp, Shape<_1, _1, _1>{});
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  if (wg == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x == 0) {
      cute::prefetch_tma_descriptor(&kp.tma_q);
      cute::prefetch_tma_descriptor(&kp.tma_k);
      cute::prefetch_tma_descriptor(&kp.tma_v);
      auto write = cutlass::make_producer_start_state<Pipeline>();
      for (int w = blockIdx.x, n = 0; w < kp.num_work; ++n) {
        const int next = dynamic ? scheduler.publish_next(n) : w + (int)gridDim.x;
        const NaWork work(p, q_shape, kp.num_q_tiles, w);
        na_fwd_load<Traits>(kp, ss, ns, pipe_k, pipe_v, write, n, work.qt, kv_shape,
                            work.qt.walk(axis, q_shape, kv_shape), work.head,
                            work.head / (p.num_heads_q / p.num_heads_k));
        w = next;
      }
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int mma_tid = threadIdx.x - 128;
    typename Traits::TiledMmaPV mma_pv;
    Tensor tOrO = partition_fragment_C(mma_pv, select<0, 1>(typename Traits::TileShapePV{}));
    typename Traits::TiledMmaQK mma_qk;
    Tensor tScS = mma_qk.get_thread_slice(mma_tid).partition_C(
        make_identity_tensor(select<0, 1>(typename Traits::TileShapeQK{})));
    Tensor coord_rc = make_tensor(tScS.data(), fmha::accumulator_rowcol(tScS.layout()));
    na_fill_column_sets(&ns.mask, kv_shape, coord_rc, mma_tid, Traits::kNumMmaThreads);
    NamedBarrier::sync(kColumnSetsBarrier, Traits::kNumMmaThreads);

    typename Traits::PipelineState read;
    for (int w = blockIdx.x, n = 0; w < kp.num_work; ++n) {
      const NaWork work(p, q_shape, kp.num_q_tiles, w);
      // A warp's accumulator rows are its own 16 (wgmma m64: warp i of a warpgroup holds rows
      // 16i .. 16i + 15), so each warp fills their windows itself and a warp barrier suffices.
      na_fill_row_windows(&ns.mask, axis, q_shape, work.qt.origin, mma_tid / 32 * 16, 16, threadIdx.x % 32);
      __syncwarp();
      const NaMask<2, Traits::kBlockM, Traits::kBlockN> mask(axis, q_shape, kv_shape, work.qt.origin, &ns.mask,
                                                            mma_tid);
      fmha::OnlineSoftmax<2> softmax(p.scale);
      // Every query sees at least one key, so the walk is never empty.
      fmha::fmha_fwd_mma<Traits>(ss, pipe_k, pipe_v, mask, 0, work.qt.walk(axis, q_shape, kv_shape), mma_tid, tOrO,
                                 softmax, read, n & 1, /*start_turns=*/n == 0);
      cutlass::arch::ClusterBarrier::arrive(&ns.q_empty);
      const NaRowMap<Element> row_map(p, work.qt, q_shape, work.head);
      fmha::fmha_fwd_store<Traits>(ns.o.data(), tOrO, softmax, row_map, mma_tid);
      w = dynamic ? scheduler.receive_next(n) : w + (int)gridDim.x;
    }
  }
}

}  // namespace attnx::na

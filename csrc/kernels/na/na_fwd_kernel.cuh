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
#include "../fmha/fmha_fwd_mainloop.cuh"
#include "na_fwd_traits.h"
#include "na_tile_map.cuh"

namespace attnx::na {

using namespace cute;

// Shared memory: the core's storage, then the mask tables.
template <class Traits>
using MaskSmem = NaMaskSmem<Traits::kBlockM, Traits::kBlockN>;
template <class Traits>
constexpr int kMaskSmemOffset = (Traits::kSmemBytes + 15) / 16 * 16;
template <class Traits>
constexpr int kNaSmemBytes = kMaskSmemOffset<Traits> + (int)sizeof(MaskSmem<Traits>);
// Named barrier of the consumer warpgroups (ids 1-2: epilogue, 4-5: ping-pong scheduler).
constexpr int kMaskTablesBarrier = 3;

template <class Traits>
struct NaFwdKernelParams {
  NaFwdParams p;
  // (chunk, axis 2, axis 1, batch x axis 0, head) views of q, k, v (na_fwd_launch.cuh).
  cute::TmaDescriptor tma_q, tma_k, tma_v;
  int num_q_tiles;  // per (batch, head)
};

template <class Traits>
__device__ __forceinline__ void na_tma_load(const cute::TmaDescriptor& desc, uint64_t* barrier,
                                            typename Traits::Element* smem, const int (&origin)[kAxes], int batch,
                                            int extent0, int head) {
  using Box = NaTmaBox<Traits>;
  CUTLASS_PRAGMA_UNROLL
  for (int c = 0; c < Box::kChunks; ++c)
    SM90_TMA_LOAD_5D::copy(&desc, barrier, static_cast<uint64_t>(TMA::CacheHintSm90::EVICT_NORMAL),
                           smem + c * (Traits::kBlockN * Box::kChunk), c * Box::kChunk, origin[2], origin[1],
                           batch * extent0 + origin[0], head);
}

// One thread issues everything: Q once, then K and V of each visited tile (separate pipelines,
// so S = Q K^T starts before V has landed).
template <class Traits>
__device__ void na_fwd_load(const NaFwdKernelParams<Traits>& kp, typename Traits::SharedStorage& ss,
                            typename Traits::Pipeline& pipe_k, typename Traits::Pipeline& pipe_v, const NaQTile& qt,
                            const NaTileShape& kv_shape, const NaTileWalk& walk, int head, int head_k) {
  static_assert(Traits::kBlockM == Traits::kBlockN, "one slab size for Q and KV tiles");
  const int extent0 = kp.p.extent[0];
  cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&ss.barrier_q, Traits::kTmaBytesQ);
  na_tma_load<Traits>(kp.tma_q, &ss.barrier_q, ss.q.data(), qt.origin, qt.batch, extent0, head);
  auto write = cutlass::make_producer_start_state<typename Traits::Pipeline>();
  constexpr int kStageElems = Traits::kBlockN * Traits::kHeadDim;
  const int count = walk.count();
  for (int i = 0; i < count; ++i) {
    const NaKvTile t = walk.tile(i);
    int origin[kAxes];
    CUTLASS_PRAGMA_UNROLL
    for (int a = 0; a < kAxes; ++a) origin[a] = t.t[a] * kv_shape.dim[a];
    pipe_k.producer_acquire(write);
    na_tma_load<Traits>(kp.tma_k, pipe_k.producer_get_barrier(write), ss.k.data() + write.index() * kStageElems,
                        origin, qt.batch, extent0, head_k);
    pipe_v.producer_acquire(write);
    na_tma_load<Traits>(kp.tma_v, pipe_v.producer_get_barrier(write), ss.v.data() + write.index() * kStageElems,
                        origin, qt.batch, extent0, head_k);
    ++write;
  }
}

template <class Traits>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    na_fwd_kernel(const __grid_constant__ NaFwdKernelParams<Traits> kp) {
  using Pipeline = typename Traits::Pipeline;
  using Element = typename Traits::Element;
  extern __shared__ char smem_buf[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem_buf);
  const NaFwdParams& p = kp.p;

  const NaTileShape q_shape(p.q_tile), kv_shape(p.kv_tile);
  const NaQTile qt(p, q_shape, blockIdx.x);
  const int head = blockIdx.y;
  NaAxis axis[kAxes];
  CUTLASS_PRAGMA_UNROLL
  for (int a = 0; a < kAxes; ++a) axis[a] = NaAxis{p.extent[a], p.kernel_size[a], p.stride[a], p.causal[a]};
  const NaTileWalk walk = qt.walk(axis, q_shape, kv_shape);

  const int wg = threadIdx.x / 128;
  const auto pp = fmha::tma_pipeline_params<Pipeline>(Traits::kTmaBytesKV, Traits::kNumMmaThreads);
  if (threadIdx.x == 0) cutlass::arch::ClusterTransactionBarrier::init(&ss.barrier_q, 1);
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
      na_fwd_load<Traits>(kp, ss, pipe_k, pipe_v, qt, kv_shape, walk, head,
                          head / (p.num_heads_q / p.num_heads_k));
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int mma_tid = threadIdx.x - 128;
    typename Traits::TiledMmaPV mma_pv;
    Tensor tOrO = partition_fragment_C(mma_pv, select<0, 1>(typename Traits::TileShapePV{}));
    fmha::OnlineSoftmax<2> softmax(p.scale);

    typename Traits::TiledMmaQK mma_qk;
    Tensor tScS = mma_qk.get_thread_slice(mma_tid).partition_C(
        make_identity_tensor(select<0, 1>(typename Traits::TileShapeQK{})));
    Tensor coord_rc = make_tensor(tScS.data(), fmha::accumulator_rowcol(tScS.layout()));
    auto* mask_smem = reinterpret_cast<MaskSmem<Traits>*>(smem_buf + kMaskSmemOffset<Traits>);
    na_fill_mask_tables(mask_smem, axis, q_shape, kv_shape, qt.origin, coord_rc, mma_tid, Traits::kNumMmaThreads);
    NamedBarrier::sync(kMaskTablesBarrier, Traits::kNumMmaThreads);
    const NaMask<2, Traits::kBlockM, Traits::kBlockN> mask(axis, q_shape, kv_shape, qt.origin, mask_smem, mma_tid);

    // Every query sees at least one key, so the walk is never empty.
    fmha::fmha_fwd_mma<Traits>(ss, pipe_k, pipe_v, mask, 0, walk, mma_tid, tOrO, softmax);
    const NaRowMap<Element> row_map(p, qt, q_shape, head);
    fmha::fmha_fwd_store<Traits>(ss, tOrO, softmax, row_map, mma_tid);
  }
}

}  // namespace attnx::na

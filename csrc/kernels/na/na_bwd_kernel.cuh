// Fused neighborhood-attention backward on the Hopper FMHA core: one CTA per (multi-dimensional
// KV tile of 128 keys, KV head, batch), warp-specialised exactly as fmha_bwd_kernel.cuh, whose
// consumer mainloop (fmha_bwd_mma) it runs unchanged. What differs:
//   - the walk: for each query head of the GQA group, the box of 64-token Q tiles with a query
//     that sees one of the CTA's keys (NaInverseAxis per axis), tile-major workspace rows;
//   - the mask: NaMask with the roles swapped (rows = keys, windows = the queries a key is seen
//     by), element masking only on partly visible tiles;
//   - the addressing: 5-D TMA boxes straight from [B, *spatial, H, D] (na_tma.cuh), dK/dV rows
//     stored through the tile's token offsets.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "../common/opaque.cuh"
#include "../fmha/fmha_bwd_mainloop.cuh"
#include "na_bwd_prepost.cuh"
#include "na_tile_map.cuh"
#include "na_tma.cuh"

namespace attnx::na {

using namespace cute;

template <class Traits>
struct NaBwdKernelParams {
  NaBwdParams p;  // with the chosen tiles
  cute::TmaDescriptor tma_q, tma_do, tma_k, tma_v;
  int num_kv_tiles;  // per (batch, KV head): grid.x = batch x KV tile
  int num_q_tiles;   // per (batch, query head): workspace tiles
};

// Shared memory after the core's: the mask tables (rows = the CTA's keys, columns = a Q tile).
template <class Traits>
struct NaBwdSmem {
  NaMaskSmem<Traits::kBlockN, Traits::kBlockM> mask;
};
template <class Traits>
constexpr int kNaBwdSmemOffset = (Traits::kSmemBytes + 127) / 128 * 128;
template <class Traits>
constexpr int kNaBwdSmemBytes = kNaBwdSmemOffset<Traits> + (int)sizeof(NaBwdSmem<Traits>);
// Named barrier of the consumer warpgroups (1 is free in the backward, 2 orders the dS buffers).
constexpr int kNaBwdColumnSetsBarrier = 3;

// The walk of one CTA: query head outer (the group of its KV head), Q tile inner (row-major over
// the box). Steps carry the Q tile's coordinates and its workspace row.
struct NaBwdWalk {
  NaTileWalk box;
  int group, head_k, batch, num_batches, num_q_tiles;
  int tiles1, tiles2;  // Q tile grid extents of axes 1 and 2
  __device__ int count() const { return box.count() * group; }
  __device__ fmha::BwdStep<NaKvTile> step(int i) const {
    const int per_head = box.count(), g = i / per_head, head = head_k * group + g;
    const NaKvTile t = box.tile(i - g * per_head);
    const int64_t flat = ((int64_t)t.t[0] * tiles1 + t.t[1]) * tiles2 + t.t[2];
    return {head, t, (((int64_t)head * num_batches + batch) * num_q_tiles + flat) * kNaBwdQTokens};
  }
};

// NaMask (rows = keys) taking the walk's steps.
template <int kRowTile, int kColTile>
struct NaBwdMask {
  NaMask<2, kRowTile, kColTile> mask;
  __device__ bool tile_needs_mask(const fmha::BwdStep<NaKvTile>& st) const { return mask.tile_needs_mask(st.tile); }
  template <class TensorS, class TensorC>
  __device__ void apply(TensorS& st_rc, TensorC const& coord_rc, const fmha::BwdStep<NaKvTile>& st) const {
    mask.apply(st_rc, coord_rc, st.tile);
  }
};

// K and V of a work tile once (its n-th with work: once the consumers are done with the previous
// tile's); then per step the Q and dO tiles with their lse / dpsum slices. `write` carries the
// pipeline state across work tiles.
template <class Traits>
__device__ void na_bwd_load(const NaBwdKernelParams<Traits>& kp, typename Traits::SharedStorage& ss,
                            typename Traits::Pipeline& pipe_q, typename Traits::Pipeline& pipe_do,
                            typename Traits::PipelineState& write, int n, const NaQTile& kv_tile,
                            const NaTileShape& q_shape, const NaBwdWalk& walk) {
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  const NaBwdParams& p = kp.p;
  const int extent0 = p.extent[0];
  fmha::fmha_bwd_acquire_kv<Traits>(ss, n);
  na_tma_load<Traits, kBlockN>(kp.tma_k, &ss.barrier_kv, ss.k.data(), kv_tile.origin, kv_tile.batch, extent0,
                               walk.head_k);
  na_tma_load<Traits, kBlockN>(kp.tma_v, &ss.barrier_kv, ss.v.data(), kv_tile.origin, kv_tile.batch, extent0,
                               walk.head_k);

  const NaBwdWorkspace ws(p, kp.num_q_tiles);
  constexpr int kStageElems = kBlockM * Traits::kHeadDim;
  const int count = walk.count();
  for (int i = 0; i < count; ++i) {
    const auto st = walk.step(i);
    int origin[kAxes];
    CUTLASS_PRAGMA_UNROLL
    for (int a = 0; a < kAxes; ++a) origin[a] = st.tile.t[a] * q_shape.dim[a];
    pipe_q.producer_acquire(write);
    na_tma_load<Traits, kBlockM>(kp.tma_q, pipe_q.producer_get_barrier(write), ss.q.data() + write.index() * kStageElems,
                                 origin, kv_tile.batch, extent0, st.head);
    SM90_BULK_COPY_G2S::copy(ws.lse_log2 + st.ws_row, pipe_q.producer_get_barrier(write),
                             ss.lse_log2[write.index()], kBlockM * sizeof(float));
    pipe_do.producer_acquire(write);
    na_tma_load<Traits, kBlockM>(kp.tma_do, pipe_do.producer_get_barrier(write),
                                 ss.dout.data() + write.index() * kStageElems, origin, kv_tile.batch, extent0, st.head);
    SM90_BULK_COPY_G2S::copy(ws.dpsum + st.ws_row, pipe_do.producer_get_barrier(write), ss.dpsum[write.index()],
                             kBlockM * sizeof(float));
    ++write;
  }
}

// dK (scaled) or dV of the CTA's keys from the accumulator registers; keys past an axis end are
// not stored.
template <class Traits, class TensorAcc, class TensorCoord>
__device__ void na_store_dkv(const TensorAcc& acc, const TensorCoord& coord, float scale, typename Traits::Element* base,
                             const int64_t (&axis_stride)[kAxes], const NaQTile& kv_tile, const NaTileShape& kv_shape,
                             const int (&extent)[kAxes]) {
  using Element = typename Traits::Element;
  CUTLASS_PRAGMA_UNROLL
  for (int i = 0; i < size(acc); i += 2) {  // value pairs are adjacent columns of one row
    const int r = get<0>(coord(i)), c = get<1>(coord(i));
    int64_t off = 0;
    bool valid = true;
    CUTLASS_PRAGMA_UNROLL
    for (int a = 0; a < kAxes; ++a) {
      const int x = kv_tile.origin[a] + kv_shape.offset(r, a);
      valid = valid && x < extent[a];
      off += x * axis_stride[a];
    }
    if (valid) {
      Element* dst = base + off + c;
      dst[0] = static_cast<Element>(acc(i) * scale);
      dst[1] = static_cast<Element>(acc(i + 1) * scale);
    }
  }
}

// A work tile: a multi-dimensional KV tile of one KV head; w = KV head x (batch x KV tile), the
// KV tiles decoded like the forward's Q tiles.
template <class Traits>
__device__ __forceinline__ NaBwdWalk na_bwd_work(const NaBwdKernelParams<Traits>& kp, const NaAxis (&axis)[kAxes],
                                                 const NaTileShape& q_shape, const NaTileShape& kv_shape, int w,
                                                 NaQTile& kv_tile) {
  const NaBwdParams& p = kp.p;
  const int per_head = kp.num_kv_tiles * p.batch, head_k = w / per_head;
  kv_tile = NaQTile(p, kv_shape, w - head_k * per_head);
  return NaBwdWalk{na_q_tile_box(axis, kv_tile.origin, kv_shape, q_shape),
                   p.num_heads_q / p.num_heads_k,
                   head_k,
                   kv_tile.batch,
                   p.batch,
                   kp.num_q_tiles,
                   (p.extent[1] + q_shape.dim[1] - 1) / q_shape.dim[1],
                   (p.extent[2] + q_shape.dim[2] - 1) / q_shape.dim[2]};
}

// A CTA walks the work tiles blockIdx.x, blockIdx.x + gridDim.x, ... like fmha_bwd_kernel (one
// CTA per tile by default, bwd_persistent_grid.h). Tiles whose walk is empty store zero dK/dV and
// count in no phase.
template <class Traits>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    na_bwd_kernel(const __grid_constant__ NaBwdKernelParams<Traits> kp) {
  using Pipeline = typename Traits::Pipeline;
  using Element = typename Traits::Element;
  extern __shared__ char smem_buf[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem_buf);
  auto& ns = *reinterpret_cast<NaBwdSmem<Traits>*>(smem_buf + kNaBwdSmemOffset<Traits>);
  const NaBwdParams& p = kp.p;
  static_assert(kNaBwdSmemBytes<Traits> <= 227 * 1024, "over the sm_90 shared-memory limit per block");

  const NaTileShape q_shape(p.q_tile), kv_shape(p.kv_tile);
  NaAxis axis[kAxes];
  CUTLASS_PRAGMA_UNROLL
  for (int a = 0; a < kAxes; ++a) axis[a] = NaAxis{p.extent[a], p.kernel_size[a], p.stride[a], p.causal[a]};
  const int num_work = kp.num_kv_tiles * p.batch * p.num_heads_k;  // < 2^31 (launcher)

  const int wg = threadIdx.x / 128;
  const auto pp = fmha::tma_pipeline_params<Pipeline>(Traits::kTmaBytesQ, Traits::kNumMmaThreads);
  if (threadIdx.x == 0) {
    cutlass::arch::ClusterTransactionBarrier::init(&ss.barrier_kv, 1);
    cutlass::arch::ClusterBarrier::init(&ss.barrier_kv_empty, Traits::kNumMmaThreads);
  }
  Pipeline pipe_q(ss.pipeline_q, pp, Shape<_1, _1, _1>{});
  Pipeline pipe_do(ss.pipeline_do, pp, Shape<_1, _1, _1>{});
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  if (wg == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp > 1 || (warp == 0 && lane > 0)) return;  // one thread loads, one warp adds dQ
    if (threadIdx.x == 0) {
      cute::prefetch_tma_descriptor(&kp.tma_q);
      cute::prefetch_tma_descriptor(&kp.tma_do);
      cute::prefetch_tma_descriptor(&kp.tma_k);
      cute::prefetch_tma_descriptor(&kp.tma_v);
    }
    auto write = cutlass::make_producer_start_state<Pipeline>();
    int n = 0, g = 0;
    for (int w = blockIdx.x; w < num_work; w += gridDim.x) {
      NaQTile kv_tile;
      const NaBwdWalk walk = na_bwd_work(kp, axis, q_shape, kv_shape, w, kv_tile);
      if (walk.count() == 0) continue;
      if (threadIdx.x == 0) na_bwd_load<Traits>(kp, ss, pipe_q, pipe_do, write, n, kv_tile, q_shape, walk);
      if (warp == 1) fmha::fmha_bwd_dq_writer<Traits>(ss, NaBwdWorkspace(p, kp.num_q_tiles).dq_accum, walk, lane, g);
      ++n;
      g += walk.count();
    }
    if (warp == 1) fmha::fmha_bwd_dq_writer_finish(lane);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int mma_tid = threadIdx.x - 128;
    typename Traits::TiledMmadKV mma_dkv;
    using TileKV = Shape<typename Traits::BN, typename Traits::D>;
    Tensor tdKrdK = partition_fragment_C(mma_dkv, TileKV{});
    Tensor tdVrdV = partition_fragment_C(mma_dkv, TileKV{});
    Tensor coord = mma_dkv.get_thread_slice(mma_tid).partition_C(make_identity_tensor(TileKV{}));
    // Mask tables: the column sets over the Q tile shape, once (all consumers); per work tile each
    // warp fills the windows of its own 16 key rows (wgmma m64: warp i of a warpgroup holds rows
    // 16i .. 16i + 15), which only it reads, once its previous tile's steps are done.
    {
      typename Traits::TiledMmaSdP mma_sdp;
      Tensor tScS = mma_sdp.get_thread_slice(mma_tid).partition_C(
          make_identity_tensor(Shape<typename Traits::BN, typename Traits::BM>{}));
      Tensor coord_rc = make_tensor(tScS.data(), fmha::accumulator_rowcol(tScS.layout()));
      na_fill_column_sets(&ns.mask, q_shape, coord_rc, mma_tid, Traits::kNumMmaThreads);
      NamedBarrier::sync(kNaBwdColumnSetsBarrier, Traits::kNumMmaThreads);
    }

    // The consumers use all their registers in the mainloop, so nothing of a tile's set-up may
    // stay alive through it: the geometry is rebuilt per tile from the parameters (from an opaque
    // zero, which the compiler cannot hoist out of the loop), and the tile decoded again for the
    // epilogue.
    typename Traits::PipelineState read;
    int n = 0, g = 0;
    for (int w = blockIdx.x; w < num_work; w += gridDim.x) {
      {
        const int zero = opaque(0);
        const NaTileShape tq(p.q_tile), tkv(p.kv_tile);
        NaAxis ax[kAxes];
        CUTLASS_PRAGMA_UNROLL
        for (int a = 0; a < kAxes; ++a) ax[a] = NaAxis{p.extent[a] + zero, p.kernel_size[a], p.stride[a], p.causal[a]};
        NaQTile kv_tile;
        const NaBwdWalk walk = na_bwd_work(kp, ax, tq, tkv, w, kv_tile);
        clear(tdKrdK);
        clear(tdVrdV);
        if (walk.count() > 0) {
          NaInverseAxis inverse[kAxes];
          CUTLASS_PRAGMA_UNROLL
          for (int a = 0; a < kAxes; ++a) inverse[a] = NaInverseAxis{ax[a]};
          na_fill_row_windows(&ns.mask, inverse, tkv, kv_tile.origin, mma_tid / 32 * 16, 16, threadIdx.x % 32);
          __syncwarp();
          const NaBwdMask<Traits::kBlockN, Traits::kBlockM> mask{
              NaMask<2, Traits::kBlockN, Traits::kBlockM>(inverse, tkv, tq, kv_tile.origin, &ns.mask, mma_tid)};
          fmha::fmha_bwd_mma<Traits>(p.scale, ss, pipe_q, pipe_do, read, n, g, mask, walk, mma_tid, tdKrdK, tdVrdV);
          ++n;
          g += walk.count();
        }
      }
      const int we = opaque(w), per_head = kp.num_kv_tiles * p.batch, head_k = we / per_head;
      const NaTileShape tkv(p.kv_tile);
      const NaQTile kv_tile(p, tkv, we - head_k * per_head);
      auto* dk = static_cast<Element*>(p.dk) + kv_tile.batch * p.dk_batch_stride + head_k * p.dk_head_stride;
      auto* dv = static_cast<Element*>(p.dv) + kv_tile.batch * p.dv_batch_stride + head_k * p.dv_head_stride;
      na_store_dkv<Traits>(tdKrdK, coord, p.scale, dk, p.dk_axis_stride, kv_tile, tkv, p.extent);
      na_store_dkv<Traits>(tdVrdV, coord, 1.f, dv, p.dv_axis_stride, kv_tile, tkv, p.extent);
    }
    fmha::fmha_bwd_dq_drain<Traits>(g);
  }
}

}  // namespace attnx::na

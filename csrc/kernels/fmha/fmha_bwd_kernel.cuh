// Hopper backward fused MHA: a CTA owns a (KV tile, KV head, batch) at a time (one per CTA by
// default; bwd_persistent_grid.h), warp-specialised like the forward (warpgroup 0: thread 0
// loads, warp 1 adds dQ tiles to the workspace; warpgroups 1-2 compute), dK/dV written once per tile.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "../common/opaque.cuh"
#include "block_sparse_bwd.cuh"
#include "fmha_bwd_mainloop.cuh"
#include "fmha_mask.cuh"

namespace attnx::fmha {

// dK (scaled) or dV from the accumulator registers to global rows key0 + r < seqlen_k.
template <class Traits, class TensorAcc, class TensorCoord>
__device__ void store_dkv(const TensorAcc& acc, const TensorCoord& coord, float scale, typename Traits::Element* base,
                          int64_t row_stride, int row0, int seqlen_k) {
  using Element = typename Traits::Element;
  CUTLASS_PRAGMA_UNROLL
  for (int i = 0; i < size(acc); i += 2) {  // value pairs are adjacent columns of one row
    const int r = row0 + get<0>(coord(i)), c = get<1>(coord(i));
    if (r < seqlen_k) {
      Element* dst = base + (int64_t)r * row_stride + c;
      dst[0] = static_cast<Element>(acc(i) * scale);
      dst[1] = static_cast<Element>(acc(i + 1) * scale);
    }
  }
}

// WindowMask on the transposed scores of one KV tile, taking the walk's steps.
template <int kBlockM, int kBlockN>
struct TransposedWindowMask {
  WindowMask<kBlockM, kBlockN> mask;
  int n_block;
  __device__ bool tile_needs_mask(const BwdStep<int>& st) const { return mask.tile_needs_mask(st.tile, n_block); }
  template <class TensorS, class TensorC>
  __device__ void apply(TensorS& st_rc, TensorC const& coord_rc, const BwdStep<int>& st) const {
    mask.apply_transposed(st_rc, coord_rc, st.tile, n_block);
  }
};

// A CTA's work tile: a KV tile of one KV head and batch. Tiles are numbered with the KV tiles of
// one (batch, KV head) consecutive, which share their Q and dO rows in L2.
struct BwdTile {
  int batch, n_block, head_k;
  __device__ static int num_n_blocks(const FmhaBwdParams& p) { return (p.seqlen_k + 127) / 128; }
  __device__ static int count(const FmhaBwdParams& p) { return num_n_blocks(p) * p.batch * p.num_heads_k; }
  __device__ BwdTile(const FmhaBwdParams& p, int w) {
    const int nb = num_n_blocks(p), per_head = nb * p.batch;
    head_k = w / per_head;
    const int r = w - head_k * per_head;
    batch = r / nb;
    n_block = r - batch * nb;
  }
};

// The walk of a work tile (dense/packed: a range of Q tiles; block-sparse: the tile's lists).
template <bool kBlockSparse>
__device__ __forceinline__ auto fmha_bwd_walk(const FmhaBwdParams& p, const VarlenBlockInfo& info, const BwdTile& t,
                                              const WindowMask<kBwdBlockM, 128>& mask) {
  if constexpr (kBlockSparse) {
    return BwdListWalk(p, t.batch, t.n_block, t.head_k, ws_row0(p, t.batch, info));
  } else {
    BwdWalk walk{p.num_heads_q / p.num_heads_k, 0, 0, t.head_k, p.ws_rows, ws_row0(p, t.batch, info)};
    mask.m_block_range(t.n_block, walk.m_min, walk.m_max);
    return walk;
  }
}

// A CTA walks the work tiles blockIdx.x, blockIdx.x + gridDim.x, ... (kBlockSparse: each tile's
// walk is its list, block_sparse_bwd.cuh; else the range of Q tiles whose rows see it). With
// several tiles per CTA (a capped grid) the next tile's K/V and first Q/dO tiles load while the
// consumers store the previous tile's dK/dV, and the dQ writer's last reduce-adds drain under the
// next tile's first steps; the default grid is one CTA per tile (measured faster, see
// bwd_persistent_grid.h), where the loop runs once.
// The roles decode the same tiles; those without steps (past a packed sequence's end: nothing;
// an empty walk: zero dK/dV) load nothing and do not count in the phases n and steps g.
template <class Traits, bool kBlockSparse>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    fmha_bwd_kernel(const __grid_constant__ FmhaBwdKernelParams<Traits> kp) {
  using Pipeline = typename Traits::Pipeline;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  static_assert(kBlockN == 128, "fmha_bwd_walk's mask type");
  extern __shared__ char smem_buf[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem_buf);
  const FmhaBwdParams& p = kp.p;

  const int wg = threadIdx.x / 128;
  const auto pp = tma_pipeline_params<Pipeline>(Traits::kTmaBytesQ, Traits::kNumMmaThreads);
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
      cute::prefetch_tma_descriptor(kp.tma_q.get_tma_descriptor());
      cute::prefetch_tma_descriptor(kp.tma_do.get_tma_descriptor());
      cute::prefetch_tma_descriptor(kp.tma_k.get_tma_descriptor());
      cute::prefetch_tma_descriptor(kp.tma_v.get_tma_descriptor());
    }
    auto write = cutlass::make_producer_start_state<Pipeline>();
    int n = 0, g = 0;
    for (int w = blockIdx.x; w < BwdTile::count(p); w += gridDim.x) {
      const BwdTile t(p, w);
      const VarlenBlockInfo info(p, t.batch);
      if (t.n_block * kBlockN >= info.seqlen_k) continue;
      const WindowMask<kBlockM, kBlockN> mask(info.seqlen_q, info.seqlen_k, p.window_left, p.window_right, p.causal);
      const auto walk = fmha_bwd_walk<kBlockSparse>(p, info, t, mask);
      if (walk.count() == 0) continue;
      if (threadIdx.x == 0) fmha_bwd_load<Traits>(kp, ss, pipe_q, pipe_do, write, n, info, t.n_block, t.head_k, walk);
      if (warp == 1) fmha_bwd_dq_writer<Traits>(ss, BwdWorkspace(p).dq_accum, walk, lane, g);
      ++n;
      g += walk.count();
    }
    if (warp == 1) fmha_bwd_dq_writer_finish(lane);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int mma_tid = threadIdx.x - 128;
    typename Traits::TiledMmadKV mma_dkv;
    using TileKV = Shape<typename Traits::BN, typename Traits::D>;
    Tensor tdKrdK = partition_fragment_C(mma_dkv, TileKV{});
    Tensor tdVrdV = partition_fragment_C(mma_dkv, TileKV{});
    Tensor coord = mma_dkv.get_thread_slice(mma_tid).partition_C(make_identity_tensor(TileKV{}));
    const bool packed = p.cu_seqlens_q != nullptr;
    typename Traits::PipelineState read;
    int steps = 0;  // the CTA's steps so far, times 2, plus the parity of its tiles with work so far
    // (The tile count is recomputed after each tile from opaque(0), not held through the mainloop.)
    for (int w = blockIdx.x; w < BwdTile::count(p) + opaque(0); w += gridDim.x) {
      {
        const BwdTile t(p, w);
        const VarlenBlockInfo info(p, t.batch);
        if (t.n_block * kBlockN >= info.seqlen_k) continue;
        const WindowMask<kBlockM, kBlockN> mask(info.seqlen_q, info.seqlen_k, p.window_left, p.window_right, p.causal);
        const auto walk = fmha_bwd_walk<kBlockSparse>(p, info, t, mask);
        clear(tdKrdK);
        clear(tdVrdV);
        if (walk.count() > 0) {
          fmha_bwd_mma<Traits>(p.scale, ss, pipe_q, pipe_do, read, steps & 1, steps >> 1,
                               TransposedWindowMask<kBlockM, kBlockN>{mask, t.n_block}, walk, mma_tid, tdKrdK, tdVrdV);
          steps = (steps + 2 * walk.count()) ^ 1;
        }
      }
      // The tile is decoded again (from opaque(w), so the first decode cannot stay alive through
      // the mainloop).
      const BwdTile t(p, opaque(w));
      const VarlenBlockInfo info(p, t.batch);
      auto* dk = static_cast<Element*>(p.dk) + (packed ? 0 : t.batch * p.dk_batch_stride) +
                 (int64_t)info.offset_k * p.dk_row_stride + (int64_t)t.head_k * p.dk_head_stride;
      auto* dv = static_cast<Element*>(p.dv) + (packed ? 0 : t.batch * p.dv_batch_stride) +
                 (int64_t)info.offset_k * p.dv_row_stride + (int64_t)t.head_k * p.dv_head_stride;
      store_dkv<Traits>(tdKrdK, coord, p.scale, dk, p.dk_row_stride, t.n_block * kBlockN, info.seqlen_k);
      store_dkv<Traits>(tdVrdV, coord, 1.f, dv, p.dv_row_stride, t.n_block * kBlockN, info.seqlen_k);
    }
    fmha_bwd_dq_drain<Traits>(steps >> 1);
  }
}

}  // namespace attnx::fmha

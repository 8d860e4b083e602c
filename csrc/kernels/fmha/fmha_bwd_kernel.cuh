// Hopper backward fused MHA: one CTA per (KV tile, KV head, batch), warp-specialised like the
// forward (warpgroup 0: thread 0 loads, warp 1 adds dQ tiles to the workspace; warpgroups 1-2
// compute), dK/dV written once at the end.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

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

// One CTA's work once its walk is known (dense/packed: a range of Q tiles; block-sparse: lists).
template <class Traits, class Walk>
__device__ __forceinline__ void fmha_bwd_cta(const FmhaBwdKernelParams<Traits>& kp, typename Traits::SharedStorage& ss,
                                             const VarlenBlockInfo& info, int batch, int n_block, int head_k,
                                             const WindowMask<Traits::kBlockM, Traits::kBlockN>& mask,
                                             const Walk& walk) {
  using Pipeline = typename Traits::Pipeline;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  const FmhaBwdParams& p = kp.p;
  const bool has_work = walk.count() > 0;

  const int wg = threadIdx.x / 128;
  const auto pp = tma_pipeline_params<Pipeline>(Traits::kTmaBytesQ, Traits::kNumMmaThreads);
  if (threadIdx.x == 0) cutlass::arch::ClusterTransactionBarrier::init(&ss.barrier_kv, 1);
  Pipeline pipe_q(ss.pipeline_q, pp, Shape<_1, _1, _1>{});
  Pipeline pipe_do(ss.pipeline_do, pp, Shape<_1, _1, _1>{});
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  if (wg == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x == 0 && has_work) fmha_bwd_load<Traits>(kp, ss, pipe_q, pipe_do, info, n_block, head_k, walk);
    if (threadIdx.x / 32 == 1 && has_work) fmha_bwd_dq_writer<Traits>(ss, BwdWorkspace(p).dq_accum, walk, threadIdx.x % 32);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int mma_tid = threadIdx.x - 128;
    typename Traits::TiledMmadKV mma_dkv;
    using TileKV = Shape<typename Traits::BN, typename Traits::D>;
    Tensor tdKrdK = partition_fragment_C(mma_dkv, TileKV{});
    Tensor tdVrdV = partition_fragment_C(mma_dkv, TileKV{});
    clear(tdKrdK);
    clear(tdVrdV);
    if (has_work)
      fmha_bwd_mma<Traits>(p.scale, ss, pipe_q, pipe_do,
                           TransposedWindowMask<kBlockM, kBlockN>{mask, n_block}, walk, mma_tid, tdKrdK, tdVrdV);
    Tensor coord = mma_dkv.get_thread_slice(mma_tid).partition_C(make_identity_tensor(TileKV{}));
    const bool packed = p.cu_seqlens_q != nullptr;
    auto* dk = static_cast<Element*>(p.dk) + (packed ? 0 : batch * p.dk_batch_stride) +
               (int64_t)info.offset_k * p.dk_row_stride + (int64_t)head_k * p.dk_head_stride;
    auto* dv = static_cast<Element*>(p.dv) + (packed ? 0 : batch * p.dv_batch_stride) +
               (int64_t)info.offset_k * p.dv_row_stride + (int64_t)head_k * p.dv_head_stride;
    store_dkv<Traits>(tdKrdK, coord, p.scale, dk, p.dk_row_stride, n_block * kBlockN, info.seqlen_k);
    store_dkv<Traits>(tdVrdV, coord, 1.f, dv, p.dv_row_stride, n_block * kBlockN, info.seqlen_k);
  }
}

// kBlockSparse: the walk is the KV tile's list (block_sparse_bwd.cuh), else the range of Q tiles
// whose rows see the tile (causal, windows).
template <class Traits, bool kBlockSparse>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    fmha_bwd_kernel(const __grid_constant__ FmhaBwdKernelParams<Traits> kp) {
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  extern __shared__ char smem_buf[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem_buf);
  const FmhaBwdParams& p = kp.p;

  const int num_n_blocks = (p.seqlen_k + kBlockN - 1) / kBlockN;  // grid.x = (batch, KV tile)
  const int n_block = blockIdx.x % num_n_blocks, batch = blockIdx.x / num_n_blocks, head_k = blockIdx.y;
  const VarlenBlockInfo info(p, batch);
  if (n_block * kBlockN >= info.seqlen_k) return;
  const WindowMask<kBlockM, kBlockN> mask(info.seqlen_q, info.seqlen_k, p.window_left, p.window_right, p.causal);
  if constexpr (kBlockSparse) {
    fmha_bwd_cta<Traits>(kp, ss, info, batch, n_block, head_k, mask,
                         BwdListWalk(p, batch, n_block, head_k, ws_row0(p, batch, info)));
  } else {
    BwdWalk walk{p.num_heads_q / p.num_heads_k, 0, 0, head_k, p.ws_rows, ws_row0(p, batch, info)};
    mask.m_block_range(n_block, walk.m_min, walk.m_max);
    fmha_bwd_cta<Traits>(kp, ss, info, batch, n_block, head_k, mask, walk);
  }
}

}  // namespace attnx::fmha

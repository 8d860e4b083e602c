// The two halves of the forward mainloop: the producer (TMA loads of Q once and of K/V tiles
// through a kStages-deep mbarrier pipeline) and the consumer warpgroups (wgmma + online softmax).
//
// Both halves walk the same KV tiles in the same order (kv_tile_walk.cuh): for dense attention
// from the last tile down, so the tiles needing a per-element mask (the sequence end, the causal
// diagonal) come first; the pipeline stage of a tile is implied by its position in the walk.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "../common/named_barrier.cuh"
#include "fmha_fwd_traits.h"
#include "fmha_params.h"
#include "kv_tile_walk.cuh"
#include "online_softmax.cuh"
#include "varlen_block_info.cuh"
#include "wgmma_gemm.cuh"

namespace attnx::fmha {

using namespace cute;

template <class Traits>
struct FmhaFwdKernelParams {
  FmhaFwdParams p;
  typename Traits::TmaQ tma_q;
  typename Traits::TmaKV tma_k;
  typename Traits::TmaKV tma_v;
  typename Traits::ShapeQKV shape_q;  // (rows, head dim, heads, batch) of the TMA tensors
  typename Traits::ShapeQKV shape_k;
};

// One thread issues everything: Q, then K_n and V_n for each visited tile. K and V have separate
// pipelines so the consumers start S = Q K^T before V has landed.
// `write` carries the pipeline state from one work tile to the next (persistent CTAs).
template <class Traits, class Walk>
__device__ void fmha_fwd_load(const FmhaFwdKernelParams<Traits>& kp, typename Traits::SharedStorage& ss,
                              typename Traits::Pipeline& pipe_k, typename Traits::Pipeline& pipe_v,
                              const VarlenBlockInfo& info, int m_block, int head, int head_k, const Walk& walk,
                              typename Traits::PipelineState& write) {
  using BlockQ = Shape<Int<Traits::kBlockM>, Int<Traits::kHeadDim>>;
  using BlockKV = Shape<Int<Traits::kBlockN>, Int<Traits::kHeadDim>>;
  Tensor mQ = kp.tma_q.get_tma_tensor(kp.shape_q)(_, _, head, info.tma_batch);
  Tensor mK = kp.tma_k.get_tma_tensor(kp.shape_k)(_, _, head_k, info.tma_batch);
  Tensor mV = kp.tma_v.get_tma_tensor(kp.shape_k)(_, _, head_k, info.tma_batch);
  Tensor gQ = local_tile(domain_offset(make_coord(info.offset_q, _0{}), mQ), BlockQ{}, make_coord(m_block, _0{}));
  Tensor gK = local_tile(domain_offset(make_coord(info.offset_k, _0{}), mK), BlockKV{}, make_coord(_, _0{}));
  Tensor gV = local_tile(domain_offset(make_coord(info.offset_k, _0{}), mV), BlockKV{}, make_coord(_, _0{}));
  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutKV{});
  auto [tQgQ, tQsQ] = tma_partition(kp.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
  auto [tKgK, tKsK] = tma_partition(kp.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
  auto [tVgV, tVsV] = tma_partition(kp.tma_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));

  cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&ss.barrier_q, Traits::kTmaBytesQ);
  copy(kp.tma_q.with(ss.barrier_q, 0), tQgQ, tQsQ);
  const int count = walk.count();
  for (int i = 0; i < count; ++i) {
    const int n = walk.tile(i);
    pipe_k.producer_acquire(write);
    copy(kp.tma_k.with(*pipe_k.producer_get_barrier(write), 0), tKgK(_, n), tKsK(_, write.index()));
    pipe_v.producer_acquire(write);
    copy(kp.tma_v.with(*pipe_v.producer_get_barrier(write), 0), tVgV(_, n), tVsV(_, write.index()));
    ++write;
  }
}

// Ping-pong between consumer warpgroups: a warpgroup issues its GEMMs only after the previous
// one has issued its own, so while one runs its softmax (exp on the MUFU, the bottleneck at small
// head dims) the tensor cores work for another. Warpgroup w waits on barrier kSchedulerId + w and
// releases its successor; the first warpgroup is released once at the start.
template <class Traits>
struct WarpgroupScheduler {
  static constexpr int kWarpgroups = Traits::kNumMmaWarpgroups;
  static constexpr int kFirstId = 4;  // named-barrier ids kFirstId .. kFirstId + kWarpgroups - 1
  int wg;
  // start: release the first warpgroup (once per CTA: across a persistent CTA's tiles the last
  // warpgroup's final pass of one tile releases it for the next).
  __device__ WarpgroupScheduler(int mma_tid, bool start) : wg(mma_tid / 128) {
    if (Traits::kPingPong && wg == 0 && start) NamedBarrier::arrive(kFirstId, 256);
  }
  __device__ void wait() const {
    if constexpr (Traits::kPingPong) NamedBarrier::sync(kFirstId + wg, 256);
  }
  __device__ void pass() const {
    if constexpr (Traits::kPingPong) NamedBarrier::arrive(kFirstId + (wg + 1) % kWarpgroups, 256);
  }
};

// Consumer warpgroups: O (tOrO, unnormalised) and the softmax state for this thread's rows.
// Software pipelining inside the warpgroup: S_n = Q K_n^T is issued before O += P_{n+1} V_{n+1}
// of the previous tile, so the tensor cores run one GEMM while the softmax of the other waits.
//
// `read` is the pipeline state of the walk's first tile and is left at the stage after its last,
// and Q is the barrier_q phase q_phase: a persistent kernel chains its work tiles through both
// (and starts the ping-pong turns on its first tile only, start_turns).
template <class Traits, class Mask, class Walk, class TensorO, class Softmax>
__device__ void fmha_fwd_mma(typename Traits::SharedStorage& ss, typename Traits::Pipeline& pipe_k,
                             typename Traits::Pipeline& pipe_v, const Mask& mask, int m_block, const Walk& walk,
                             int mma_tid, TensorO& tOrO, Softmax& softmax, typename Traits::PipelineState& read,
                             int q_phase = 0, bool start_turns = true) {
  using TileShapeQK = typename Traits::TileShapeQK;
  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(mma_tid);
  auto thr_pv = mma_pv.get_thread_slice(mma_tid);
  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKV{});
  Tensor sVt = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutVt{});
  Tensor tSrQ = thr_qk.partition_fragment_A(sQ);
  Tensor tSrK = thr_qk.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_K, stage)
  Tensor tOrV = thr_pv.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, stage)
  Tensor tScS = thr_qk.partition_C(make_identity_tensor(select<0, 1>(TileShapeQK{})));
  Tensor coord_rc = make_tensor(tScS.data(), accumulator_rowcol(tScS.layout()));
  constexpr int kRows = Softmax::kNumRows;

  auto scores = [&]() { return partition_fragment_C(mma_qk, select<0, 1>(TileShapeQK{})); };
  auto to_p = [&](auto const& tSrS) {
    return convert_fragment<typename Traits::Element>(tSrS, accumulator_as_a_operand(tSrS.layout()));
  };

  clear(tOrO);
  const WarpgroupScheduler<Traits> scheduler(mma_tid, start_turns);
  cutlass::arch::ClusterTransactionBarrier::wait(&ss.barrier_q, q_phase);

  auto n = walk.tile(0);  // an int, or a family's tile coordinates
  Tensor tSrS = scores();
  pipe_k.consumer_wait(read);
  scheduler.wait();
  wgmma_gemm<true, -1>(mma_qk, tSrQ, tSrK(_, _, _, read.index()), tSrS);
  scheduler.pass();
  warpgroup_wait<0>();
  pipe_k.consumer_release(read);
  // row_scale brings O from the previous tile's row maxima to the current ones. Without turns, O
  // is rescaled while the next S = Q K^T runs on the tensor cores, just before O += P V is issued,
  // so the multiplies stay off the path from one tile's PV to the next tile's S (measured on an
  // H200: D 128 +0.4-1.2%). With turns that spot lies inside the warpgroup's turn and delays the
  // next one (D 64: -1.8%), so there O is rescaled as soon as its PV has completed.
  constexpr bool kRescaleUnderS = !Traits::kPingPong;
  float row_scale[kRows];
  {
    Tensor s_rc = make_tensor(tSrS.data(), accumulator_rowcol(tSrS.layout()));
    if (mask.tile_needs_mask(m_block, n)) mask.apply(s_rc, coord_rc, m_block, n);
    softmax.template update<true>(s_rc, row_scale);
  }
  auto tOrP = to_p(tSrS);
  Tensor o_rc = make_tensor(tOrO.data(), accumulator_rowcol(tOrO.layout()));

  const int count = walk.count();
  for (int i = 1; i < count; ++i) {
    n = walk.tile(i);
    auto read_v = read;
    ++read;
    Tensor tSrS = scores();
    pipe_k.consumer_wait(read);
    scheduler.wait();
    wgmma_gemm<true, -1>(mma_qk, tSrQ, tSrK(_, _, _, read.index()), tSrS);
    if constexpr (kRescaleUnderS) softmax.rescale(o_rc, row_scale);  // the previous PV has completed
    pipe_v.consumer_wait(read_v);
    wgmma_gemm<false, -1>(mma_pv, tOrP, tOrV(_, _, _, read_v.index()), tOrO);
    scheduler.pass();
    warpgroup_wait<1>();  // S is ready; O += P V may still run
    pipe_k.consumer_release(read);
    Tensor s_rc = make_tensor(tSrS.data(), accumulator_rowcol(tSrS.layout()));
    if (mask.tile_needs_mask(m_block, n)) mask.apply(s_rc, coord_rc, m_block, n);
    softmax.template update<false>(s_rc, row_scale);
    warpgroup_wait<0>();
    pipe_v.consumer_release(read_v);
    if constexpr (!kRescaleUnderS) softmax.rescale(o_rc, row_scale);
    tOrP = to_p(tSrS);
  }

  if constexpr (kRescaleUnderS) softmax.rescale(o_rc, row_scale);
  pipe_v.consumer_wait(read);
  wgmma_gemm<false, 0>(mma_pv, tOrP, tOrV(_, _, _, read.index()), tOrO);
  pipe_v.consumer_release(read);
  ++read;
}

}  // namespace attnx::fmha

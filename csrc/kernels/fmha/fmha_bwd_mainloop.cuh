// The parts of the backward mainloop: the producer (K and V of this CTA's tile once; then per
// visited (query head, Q tile) the Q and dO tiles with their lse / dpsum slices), the consumer
// warpgroups (five wgmma per step: S^T, dP^T, dV, dK, dQ) and the dQ writer warp.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "../common/named_barrier.cuh"
#include "fmha_bwd_prepost.cuh"
#include "fmha_bwd_traits.h"
#include "online_softmax.cuh"
#include "varlen_block_info.cuh"
#include "wgmma_gemm.cuh"

namespace attnx::fmha {

using namespace cute;

template <class Traits>
struct FmhaBwdKernelParams {
  FmhaBwdParams p;
  typename Traits::TmaQ tma_q;
  typename Traits::TmaQ tma_do;
  typename Traits::TmaKV tma_k;
  typename Traits::TmaKV tma_v;
  typename Traits::ShapeQKV shape_q;  // (rows, head dim, heads, batch) of the TMA tensors
  typename Traits::ShapeQKV shape_k;
};

// One step of a backward walk: a query head, one of its Q tiles (`tile`: an int for dense and
// packed attention, a family's tile coordinates otherwise) and the tile's first row in the
// workspace arrays (its lse / dpsum slice and dq_accum rows).
template <class Tile>
struct BwdStep {
  int head;
  Tile tile;
  int64_t ws_row;
};

// Dense and packed attention: for each query head of the group, Q tiles m_min .. m_max - 1.
// Other families (neighborhood) bring their own walk with the same two members.
struct BwdWalk {
  int group, m_min, m_max, head_k;
  int64_t ws_rows, ws_row0;  // workspace rows per head; this sequence's first row
  __device__ int count() const { return m_max > m_min ? group * (m_max - m_min) : 0; }
  __device__ BwdStep<int> step(int i) const {
    const int len = m_max - m_min, g = i / len, m = m_min + i - g * len, head = head_k * group + g;
    return {head, m, (int64_t)head * ws_rows + ws_row0 + (int64_t)m * kBwdBlockM};
  }
};

// Before the K/V of a CTA's n-th work tile (n > 0) load, the consumers must be done with the
// previous tile's (they arrive on kv_empty once the tile's last step has completed, then store
// dK/dV while the next tile's K/V and first Q/dO tiles are already in flight).
template <class Traits>
__device__ __forceinline__ void fmha_bwd_acquire_kv(typename Traits::SharedStorage& ss, int n) {
  if (n > 0) cutlass::arch::ClusterBarrier::wait(&ss.barrier_kv_empty, (n - 1) & 1);
  cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&ss.barrier_kv, 2 * Traits::kTmaBytesKV);
}

// `write` carries the Q/dO pipeline state from one work tile to the next; n: the tile's ordinal
// among this CTA's tiles with work.
template <class Traits, class Walk>
__device__ void fmha_bwd_load(const FmhaBwdKernelParams<Traits>& kp, typename Traits::SharedStorage& ss,
                              typename Traits::Pipeline& pipe_q, typename Traits::Pipeline& pipe_do,
                              typename Traits::PipelineState& write, int n, const VarlenBlockInfo& info,
                              int n_block, int head_k, const Walk& walk) {
  using BlockQ = Shape<typename Traits::BM, typename Traits::D>;
  using BlockKV = Shape<typename Traits::BN, typename Traits::D>;
  const FmhaBwdParams& p = kp.p;
  Tensor mK = kp.tma_k.get_tma_tensor(kp.shape_k)(_, _, head_k, info.tma_batch);
  Tensor mV = kp.tma_v.get_tma_tensor(kp.shape_k)(_, _, head_k, info.tma_batch);
  Tensor gK = local_tile(domain_offset(make_coord(info.offset_k, _0{}), mK), BlockKV{}, make_coord(n_block, _0{}));
  Tensor gV = local_tile(domain_offset(make_coord(info.offset_k, _0{}), mV), BlockKV{}, make_coord(n_block, _0{}));
  Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutKV{});
  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sdO = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutQ{});
  auto [tKgK, tKsK] = tma_partition(kp.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
  auto [tVgV, tVsV] = tma_partition(kp.tma_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));
  fmha_bwd_acquire_kv<Traits>(ss, n);
  copy(kp.tma_k.with(ss.barrier_kv, 0), tKgK, tKsK);
  copy(kp.tma_v.with(ss.barrier_kv, 0), tVgV, tVsV);

  const BwdWorkspace ws(p);
  const int count = walk.count();
  for (int i = 0; i < count; ++i) {
    const auto st = walk.step(i);
    Tensor mQ = kp.tma_q.get_tma_tensor(kp.shape_q)(_, _, st.head, info.tma_batch);
    Tensor mdO = kp.tma_do.get_tma_tensor(kp.shape_q)(_, _, st.head, info.tma_batch);
    Tensor gQ = local_tile(domain_offset(make_coord(info.offset_q, _0{}), mQ), BlockQ{}, make_coord(st.tile, _0{}));
    Tensor gdO = local_tile(domain_offset(make_coord(info.offset_q, _0{}), mdO), BlockQ{}, make_coord(st.tile, _0{}));
    auto [tQgQ, tQsQ] = tma_partition(kp.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
    auto [tdOgdO, tdOsdO] =
        tma_partition(kp.tma_do, _0{}, Layout<_1>{}, group_modes<0, 2>(sdO), group_modes<0, 2>(gdO));
    pipe_q.producer_acquire(write);
    copy(kp.tma_q.with(*pipe_q.producer_get_barrier(write), 0), tQgQ, tQsQ(_, write.index()));
    SM90_BULK_COPY_G2S::copy(ws.lse_log2 + st.ws_row, pipe_q.producer_get_barrier(write),
                             ss.lse_log2[write.index()], Traits::kBlockM * sizeof(float));
    pipe_do.producer_acquire(write);
    copy(kp.tma_do.with(*pipe_do.producer_get_barrier(write), 0), tdOgdO, tdOsdO(_, write.index()));
    SM90_BULK_COPY_G2S::copy(ws.dpsum + st.ws_row, pipe_do.producer_get_barrier(write), ss.dpsum[write.index()],
                             Traits::kBlockM * sizeof(float));
    ++write;
  }
}

// Consumer warpgroups: accumulate dK (unscaled) and dV for this thread's keys; add dQ partials
// (unscaled) to the workspace. Family-neutral: the walk gives each step's head, Q tile and
// workspace row; the mask (on transposed scores) takes the step.
// Named barriers of the dQ hand-off, per buffer b = g % kDqStages where g counts the CTA's steps
// over all its work tiles (so the hand-off runs on across tiles): the consumers sync on empty + b
// before writing buffer b (not for their first kDqStages steps: the buffers start empty) and
// arrive on full + b after; the writer warp syncs on full + b, issues the bulk reduce-add and, once
// the copy has read the buffer, arrives on empty + b. The consumers' last kDqStages syncs come
// after their last tile (fmha_bwd_dq_drain), so every arrival is matched.
constexpr int kDqFullBarrier = 4;   // 4, 5
constexpr int kDqEmptyBarrier = 6;  // 6, 7

__device__ __forceinline__ void bulk_reduce_add_f32(float* gmem, const float* smem, int bytes) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(gmem), "r"(s),
               "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}

// The dQ writer (one warp of the producer warpgroup): per step, adds the consumers' staged dQ tile
// to the workspace rows of that step. Walks the same steps as the consumers; g0: the CTA's steps
// before this tile's. The caller waits for the adds to land (bulk wait_group 0) before it exits.
template <class Traits, class Walk>
__device__ void fmha_bwd_dq_writer(typename Traits::SharedStorage& ss, float* dq_accum, const Walk& walk, int lane,
                                   int g0) {
  constexpr int kTileFloats = Traits::kBlockM * Traits::kHeadDim;
  constexpr int kThreads = Traits::kNumMmaThreads + 32;
  constexpr int kBufs = Traits::kDqStages;
  const int count = walk.count();
  for (int step = 0; step < count; ++step) {
    const int buf = (g0 + step) % kBufs;
    NamedBarrier::sync(kDqFullBarrier + buf, kThreads);
    if (lane == 0) {
      bulk_reduce_add_f32(dq_accum + walk.step(step).ws_row * Traits::kHeadDim, ss.dq.data() + buf * kTileFloats,
                          kTileFloats * (int)sizeof(float));
      asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");  // the buffer may be rewritten
    }
    __syncwarp();
    NamedBarrier::arrive(kDqEmptyBarrier + buf, kThreads);
  }
}

__device__ __forceinline__ void fmha_bwd_dq_writer_finish(int lane) {
  if (lane == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");  // the adds have landed
}

// Consumers, after their last work tile: the syncs that match the writer's last kDqStages arrivals
// (total: the CTA's steps over all its tiles).
template <class Traits>
__device__ __forceinline__ void fmha_bwd_dq_drain(int total) {
  constexpr int kBufs = Traits::kDqStages;
  for (int g = total; g < total + kBufs; ++g)
    if (g >= kBufs) NamedBarrier::sync(kDqEmptyBarrier + g % kBufs, Traits::kNumMmaThreads + 32);
}

template <class Traits, class Mask, class Walk, class TensordK, class TensordV>
__device__ void fmha_bwd_mma(float softmax_scale, typename Traits::SharedStorage& ss,
                             typename Traits::Pipeline& pipe_q, typename Traits::Pipeline& pipe_do,
                             typename Traits::PipelineState& read, int n, int g0, const Mask& mask,
                             const Walk& walk, int mma_tid, TensordK& tdKrdK, TensordV& tdVrdV) {
  using Element = typename Traits::Element;
  typename Traits::TiledMmaSdP mma_sdp;
  typename Traits::TiledMmadKV mma_dkv;
  typename Traits::TiledMmadQ mma_dq;
  auto thr_sdp = mma_sdp.get_thread_slice(mma_tid);
  auto thr_dkv = mma_dkv.get_thread_slice(mma_tid);
  auto thr_dq = mma_dq.get_thread_slice(mma_tid);

  Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutKV{});
  Tensor sKt = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKVt{});
  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sdO = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutQ{});
  Tensor sQt = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQt{});
  Tensor sdOt = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutQt{});
  Tensor sdS = make_tensor(make_smem_ptr(ss.ds.data()), typename Traits::SmemLayoutdS{});
  Tensor sdSt = make_tensor(make_smem_ptr(ss.ds.data()), typename Traits::SmemLayoutdSt{});

  Tensor tSrK = thr_sdp.partition_fragment_A(sK);
  Tensor tSrQ = thr_sdp.partition_fragment_B(sQ);  // (MMA, MMA_N, MMA_K, stage)
  Tensor tdPrV = thr_sdp.partition_fragment_A(sV);
  Tensor tdPrdO = thr_sdp.partition_fragment_B(sdO);
  Tensor tdVrdOt = thr_dkv.partition_fragment_B(sdOt);
  Tensor tdKrQt = thr_dkv.partition_fragment_B(sQt);
  Tensor tdQrdS = thr_dq.partition_fragment_A(sdS);
  Tensor tdQrKt = thr_dq.partition_fragment_B(sKt);

  using TileSdP = Shape<typename Traits::BN, typename Traits::BM>;
  Tensor tScS = thr_sdp.partition_C(make_identity_tensor(TileSdP{}));
  Tensor coord_rc = make_tensor(tScS.data(), accumulator_rowcol(tScS.layout()));  // (key, query)
  // dS^T from the accumulator to dS (queries as rows, keys contiguous) with transposing stmatrix:
  // each 16-byte row is 8 consecutive keys of one query, four instructions per thread per step
  // instead of 32 two-byte stores (and far fewer address registers).
  auto store_ds = make_tiled_copy_C(Copy_Atom<SM90_U16x8_STSM_T, Element>{}, mma_sdp);
  auto thr_store_ds = store_ds.get_thread_slice(mma_tid);
  Tensor tdSsdS = thr_store_ds.partition_D(sdSt);
  Tensor tdQcdQ = thr_dq.partition_C(make_identity_tensor(Shape<typename Traits::BM, typename Traits::D>{}));

  const float scale_log2 = softmax_scale * 1.4426950408889634f;
  cutlass::arch::ClusterTransactionBarrier::wait(&ss.barrier_kv, n & 1);
  const int count = walk.count();
  for (int step = 0; step < count; ++step) {
    const auto st = walk.step(step);
    const int stage = read.index();
    Tensor tSrS = partition_fragment_C(mma_sdp, TileSdP{});
    Tensor tdPrdP = partition_fragment_C(mma_sdp, TileSdP{});
    pipe_q.consumer_wait(read);
    wgmma_gemm<true, -1>(mma_sdp, tSrK, tSrQ(_, _, _, stage), tSrS);
    pipe_do.consumer_wait(read);
    wgmma_gemm<true, -1>(mma_sdp, tdPrV, tdPrdO(_, _, _, stage), tdPrdP);
    warpgroup_wait<1>();
    Tensor s_rc = make_tensor(tSrS.data(), accumulator_rowcol(tSrS.layout()));
    if (mask.tile_needs_mask(st)) mask.apply(s_rc, coord_rc, st);
    // Columns outer: each query's lse / dpsum is read once and dies at once (holding all of a
    // thread's 16 + 16 values would cost 32 registers, and the consumers are at the limit).
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < size<1>(s_rc); ++mi) {
      const float lse = ss.lse_log2[stage][get<1>(coord_rc(0, mi))];
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < size<0>(s_rc); ++ni) s_rc(ni, mi) = exp2_ftz(s_rc(ni, mi) * scale_log2 - lse);
    }
    warpgroup_wait<0>();
    Tensor dp_rc = make_tensor(tdPrdP.data(), accumulator_rowcol(tdPrdP.layout()));
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < size<1>(dp_rc); ++mi) {
      const float dpsum = ss.dpsum[stage][get<1>(coord_rc(0, mi))];
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < size<0>(dp_rc); ++ni) dp_rc(ni, mi) = s_rc(ni, mi) * (dp_rc(ni, mi) - dpsum);  // dS^T
    }

    Tensor rP = convert_fragment<Element>(tSrS, tSrS.layout());
    Tensor rdS = convert_fragment<Element>(tdPrdP, tdPrdP.layout());
    Tensor tdVrP = make_tensor(rP.data(), accumulator_as_a_operand(rP.layout()));
    Tensor tdKrdS = make_tensor(rdS.data(), accumulator_as_a_operand(rdS.layout()));
    // Issue order (FA3's): dV; dS to shared memory; dQ (its wait retires dV, so the dO stage is
    // free); dK (its wait retires dQ); dQ staged for the writer while dK runs; then wait for dK.
    wgmma_gemm<false, -1>(mma_dkv, tdVrP, tdVrdOt(_, _, _, stage), tdVrdV);

    // dS through shared memory for dQ. Buffer g % 2 is free: the other warpgroup read it for
    // dQ two steps ago and has since passed the previous step's barrier, which it reaches only
    // after that dQ completed (g counts over work tiles, so this holds across them too).
    const int g = g0 + step, buf = g & 1;
    copy(store_ds, thr_store_ds.retile_S(rdS), tdSsdS(_, _, _, buf));
    cutlass::arch::fence_view_async_shared();  // generic-proxy writes read by wgmma (async proxy)
    NamedBarrier::sync(2, Traits::kNumMmaThreads);
    Tensor tdQrdQ = partition_fragment_C(mma_dq, Shape<typename Traits::BM, typename Traits::D>{});
    wgmma_gemm<true, 1>(mma_dq, tdQrdS(_, _, _, buf), tdQrKt, tdQrdQ);  // retires dV
    pipe_do.consumer_release(read);
    wgmma_gemm<false, 1>(mma_dkv, tdKrdS, tdKrQt(_, _, _, stage), tdKrdK);  // retires dQ

    // Stage dQ for the writer warp. The writer arrives on the buffer's empty barrier once the
    // copy of its previous tile (kDqStages steps ago) has read it.
    const int dq_buf = g % Traits::kDqStages;
    if (g >= Traits::kDqStages) NamedBarrier::sync(kDqEmptyBarrier + dq_buf, Traits::kNumMmaThreads + 32);
    float* sdq = ss.dq.data() + dq_buf * (Traits::kBlockM * Traits::kHeadDim);
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(tdQrdQ); i += 2) {  // value pairs are adjacent columns of one row
      const int r = get<0>(tdQcdQ(i)), c = get<1>(tdQcdQ(i));
      *reinterpret_cast<float2*>(sdq + DqTileLayout<Traits::kHeadDim>::pair_offset(r, c)) =
          make_float2(tdQrdQ(i), tdQrdQ(i + 1));
    }
    cutlass::arch::fence_view_async_shared();  // generic-proxy writes read by the bulk copy
    NamedBarrier::arrive(kDqFullBarrier + dq_buf, Traits::kNumMmaThreads + 32);
    warpgroup_wait<0>();  // dK: Q and the dS registers are free
    warpgroup_fence_operand(tdKrdK);
    warpgroup_fence_operand(tdKrdS);
    pipe_q.consumer_release(read);
    ++read;
  }
  // Every GEMM of the last step has completed (wgmma wait 0): K and V may be overwritten by the
  // next tile's.
  cutlass::arch::ClusterBarrier::arrive(&ss.barrier_kv_empty);
}

}  // namespace attnx::fmha

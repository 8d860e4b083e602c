// Tiled sparse backward: the forward's tiles (128 ordered queries over the union of their lists,
// sparse_gather_fwd_kernel.cuh) walked again, query-stationary. With P = exp(S - lse) recomputed,
//   dP = dO V^T,  dS = P (dP - delta),  dQ = scale dS K,  dV = P^T dO,  dK = scale dS^T Q,
// dQ of the tile's queries stays in registers for the whole walk (each query is in one tile per
// head, so it is written once, no atomics); each chunk's dV_c / dK_c are added to float32
// accumulators at the rows of the chunk's union keys (float2 atomics: race-free, not bitwise
// deterministic), which a last kernel scales and converts.
// Three kernels: row statistics (lse in log2 units, delta = rowsum(dO * O) - dlse), the tiles,
// the conversion. The tile pre-pass (sparse_tile_union.cu) runs before them.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "../common/named_barrier.cuh"
#include "../fmha/online_softmax.cuh"  // exp2_ftz
#include "../fmha/wgmma_gemm.cuh"
#include "sparse_gather_bwd_traits.h"
#include "sparse_gather_load.cuh"
#include "sparse_row.cuh"

namespace attnx::sparse {

using namespace cute;

// One group of 8 lanes per query row (b, i, h): {lse * log2(e), rowsum(dO * O) - dlse}; a row
// without keys (lse = -inf) gets +inf, so every P of it is exp2(s - inf) = 0, never NaN.
template <class Elem, int D>
__global__ void __launch_bounds__(256) sparse_gather_bwd_stats_kernel(const SparseBwdParams p, float2* row_stats) {
  using Row = RowSlice<Elem, D>;
  const int lane = threadIdx.x % 32, group = lane / kGroupLanes, sub = lane % kGroupLanes;
  const int64_t live_row = (int64_t(blockIdx.x) * 8 + threadIdx.x / 32) * kGroups + group;  // (b, i, h) flattened
  const bool live = live_row < int64_t(p.batch) * p.seqlen_q * p.num_heads_q;  // no early exit: the warp shuffles
  const int64_t row = live ? live_row : 0;
  const int h = static_cast<int>(row % p.num_heads_q);
  const int64_t bi = row / p.num_heads_q;
  const int i = static_cast<int>(bi % p.seqlen_q), b = static_cast<int>(bi / p.seqlen_q);
  Row x;
  float dof[Row::kElems];
  x.load(static_cast<const Elem*>(p.dout) + b * p.do_batch_stride + int64_t(i) * p.do_row_stride +
             h * p.do_head_stride, sub);
  x.widen(dof);
  x.load(static_cast<const Elem*>(p.out) + b * p.o_batch_stride + int64_t(i) * p.o_row_stride + h * p.o_head_stride,
         sub);
  float dot = x.dot(dof);
#pragma unroll
  for (int off = 1; off < kGroupLanes; off *= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
  const float lse = p.lse[row];
  if (live && sub == 0)
    row_stats[row] = make_float2(lse == -INFINITY ? INFINITY : lse * kLog2e, dot - (p.dlse != nullptr ? p.dlse[row] : 0.f));
}

// dK = scale * dK_acc, dV = dV_acc into the (strided) outputs, two elements per thread.
template <class Elem>
__global__ void __launch_bounds__(256) sparse_gather_bwd_convert_kernel(const SparseBwdParams p, const float* dk_acc,
                                                                        const float* dv_acc) {
  const int64_t pair = int64_t(blockIdx.x) * 256 + threadIdx.x;
  const int half = p.head_dim / 2;
  if (pair >= int64_t(p.batch) * p.seqlen_k * p.num_heads_k * half) return;
  const int c = static_cast<int>(pair % half) * 2;
  const int64_t r = pair / half;  // (b, j, hk) flattened, as the accumulators
  const int hk = static_cast<int>(r % p.num_heads_k);
  const int64_t bj = r / p.num_heads_k;
  const int j = static_cast<int>(bj % p.seqlen_k), b = static_cast<int>(bj / p.seqlen_k);
  const float2 k2 = *reinterpret_cast<const float2*>(dk_acc + r * p.head_dim + c);
  const float2 v2 = *reinterpret_cast<const float2*>(dv_acc + r * p.head_dim + c);
  *reinterpret_cast<uint32_t*>(static_cast<Elem*>(p.dk) + b * p.dk_batch_stride + int64_t(j) * p.dk_row_stride +
                               hk * p.dk_head_stride + c) = Packed<Elem>::from_float2(make_float2(k2.x * p.scale, k2.y * p.scale));
  *reinterpret_cast<uint32_t*>(static_cast<Elem*>(p.dv) + b * p.dv_batch_stride + int64_t(j) * p.dv_row_stride +
                               hk * p.dv_head_stride + c) = Packed<Elem>::from_float2(v2);
}

// The consumers' per-chunk barrier id (NamedBarrier ids, 256 threads): once after P / dS are in
// shared memory, once after both warpgroups' dV / dK GEMMs have read them.
constexpr int kGatherBwdBarrier = 0;

template <class Traits>
__device__ void sparse_gather_bwd_mma(const SparseBwdParams& p, const SparseGatherBwdWorkspace& ws,
                                      typename Traits::SharedStorage& ss, typename Traits::Pipeline& pipe_k,
                                      typename Traits::Pipeline& pipe_v, const int* keys, int union_count,
                                      const GatherRowMap<typename Traits::Element>& rows, int b, int hk, int mma_tid) {
  using Element = typename Traits::Element;
  using BM = typename Traits::BM;
  using BN = typename Traits::BN;
  using D = typename Traits::D;
  typename Traits::TiledMmaSdP mma_sdp;
  typename Traits::TiledMmadQ mma_dq;
  typename Traits::TiledMmadKV mma_dkv;
  auto thr_sdp = mma_sdp.get_thread_slice(mma_tid);
  auto thr_dq = mma_dq.get_thread_slice(mma_tid);
  auto thr_dkv = mma_dkv.get_thread_slice(mma_tid);

  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sdO = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutQ{});
  Tensor sQt = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQt{});
  Tensor sdOt = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutQt{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutKV{});
  Tensor sKt = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKt{});
  Tensor sPt = make_tensor(make_smem_ptr(ss.pt.data()), typename Traits::SmemLayoutPt{});
  Tensor sP = make_tensor(make_smem_ptr(ss.pt.data()), typename Traits::SmemLayoutP{});
  Tensor sdSt = make_tensor(make_smem_ptr(ss.dst.data()), typename Traits::SmemLayoutPt{});
  Tensor sdS = make_tensor(make_smem_ptr(ss.dst.data()), typename Traits::SmemLayoutP{});

  Tensor tSrQ = thr_sdp.partition_fragment_A(sQ);
  Tensor tSrK = thr_sdp.partition_fragment_B(sK);  // (MMA, MMA_N, MMA_K, stage)
  Tensor tdPrdO = thr_sdp.partition_fragment_A(sdO);
  Tensor tdPrV = thr_sdp.partition_fragment_B(sV);
  Tensor tdQrKt = thr_dq.partition_fragment_B(sKt);  // (MMA, MMA_N, MMA_K, stage)
  Tensor tdVrPt = thr_dkv.partition_fragment_A(sPt);
  Tensor tdVrdOt = thr_dkv.partition_fragment_B(sdOt);
  Tensor tdKrdSt = thr_dkv.partition_fragment_A(sdSt);
  Tensor tdKrQt = thr_dkv.partition_fragment_B(sQt);

  using TileS = Shape<BM, BN>;
  Tensor tScS = thr_sdp.partition_C(make_identity_tensor(TileS{}));
  Tensor coord_rc = make_tensor(tScS.data(), fmha::accumulator_rowcol(tScS.layout()));  // (query, key)
  // P and dS (queries x keys in registers) to P^T / dS^T (keys x queries, queries contiguous).
  auto store_p = make_tiled_copy_C(Copy_Atom<SM90_U16x8_STSM_T, Element>{}, mma_sdp);
  auto thr_store = store_p.get_thread_slice(mma_tid);
  Tensor tPsP = thr_store.partition_D(sP);
  Tensor tdSsdS = thr_store.partition_D(sdS);
  using TileKV = Shape<BN, D>;
  Tensor tKVcKV = thr_dkv.partition_C(make_identity_tensor(TileKV{}));  // (key, column) of dV_c / dK_c
  Tensor tdQrdQ = partition_fragment_C(mma_dq, Shape<BM, D>{});
  clear(tdQrdQ);

  const float scale_log2 = p.scale * kLog2e;
  const GatherBitMask<Traits> mask{ss.mask.data()};
  cutlass::arch::ClusterTransactionBarrier::wait(&ss.barrier_q, 0);
  constexpr int kRows = decltype(size<0>(coord_rc))::value;
  float lse2[kRows], delta[kRows];
  CUTLASS_PRAGMA_UNROLL
  for (int mi = 0; mi < kRows; ++mi) {
    const float2 st = ss.stats[get<0>(coord_rc(mi, 0))];
    lse2[mi] = st.x, delta[mi] = st.y;
  }
  float* dk_head = ws.dk_accum + (int64_t(b) * p.seqlen_k * p.num_heads_k + hk) * p.head_dim;
  float* dv_head = ws.dv_accum + (int64_t(b) * p.seqlen_k * p.num_heads_k + hk) * p.head_dim;
  const int64_t key_stride = int64_t(p.num_heads_k) * p.head_dim;

  typename Traits::PipelineState read;
  const int chunks = (union_count + kGatherTileN - 1) / kGatherTileN;
  for (int c = 0; c < chunks; ++c) {
    const int stage = read.index();
    Tensor tSrS = partition_fragment_C(mma_sdp, TileS{});
    Tensor tdPrdP = partition_fragment_C(mma_sdp, TileS{});
    pipe_k.consumer_wait(read);
    fmha::wgmma_gemm<true, -1>(mma_sdp, tSrQ, tSrK(_, _, _, stage), tSrS);
    pipe_v.consumer_wait(read);
    fmha::wgmma_gemm<true, -1>(mma_sdp, tdPrdO, tdPrV(_, _, _, stage), tdPrdP);
    warpgroup_wait<1>();  // S
    Tensor s_rc = make_tensor(tSrS.data(), fmha::accumulator_rowcol(tSrS.layout()));
    mask.apply(s_rc, coord_rc, 0, c);
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < kRows; ++mi)
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < size<1>(s_rc); ++ni) s_rc(mi, ni) = fmha::exp2_ftz(s_rc(mi, ni) * scale_log2 - lse2[mi]);
    warpgroup_wait<0>();  // dP
    Tensor dp_rc = make_tensor(tdPrdP.data(), fmha::accumulator_rowcol(tdPrdP.layout()));
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < kRows; ++mi)
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < size<1>(dp_rc); ++ni) dp_rc(mi, ni) = s_rc(mi, ni) * (dp_rc(mi, ni) - delta[mi]);
    Tensor rP = fmha::convert_fragment<Element>(tSrS, tSrS.layout());
    Tensor rdS = fmha::convert_fragment<Element>(tdPrdP, tdPrdP.layout());

    // P^T and dS^T of both warpgroups (the previous chunk's readers passed the last barrier).
    copy(store_p, thr_store.retile_S(rP), tPsP);
    copy(store_p, thr_store.retile_S(rdS), tdSsdS);
    cutlass::arch::fence_view_async_shared();  // generic-proxy writes read by wgmma (async proxy)
    NamedBarrier::sync(kGatherBwdBarrier, Traits::kNumMmaThreads);

    Tensor tdQrdS = make_tensor(rdS.data(), fmha::accumulator_as_a_operand(rdS.layout()));
    fmha::wgmma_gemm<false, -1>(mma_dq, tdQrdS, tdQrKt(_, _, _, stage), tdQrdQ);
    Tensor tdVrdV = partition_fragment_C(mma_dkv, TileKV{});
    Tensor tdKrdK = partition_fragment_C(mma_dkv, TileKV{});
    fmha::wgmma_gemm<true, -1>(mma_dkv, tdVrPt, tdVrdOt, tdVrdV);
    fmha::wgmma_gemm<true, 0>(mma_dkv, tdKrdSt, tdKrQt, tdKrdK);  // waits for all three
    warpgroup_fence_operand(tdQrdQ);
    // dS stayed dQ's A operand in registers until that wait: fencing it here keeps the compiler
    // from giving its registers to the dV / dK accumulators while the dQ wgmma still reads them.
    warpgroup_fence_operand(tdQrdS);
    pipe_k.consumer_release(read);
    pipe_v.consumer_release(read);
    NamedBarrier::sync(kGatherBwdBarrier, Traits::kNumMmaThreads);  // P^T / dS^T may be rewritten

    // This warpgroup's 64 keys of the chunk: add dV_c and dK_c (unscaled) at the keys' rows. A
    // thread's accumulator values lie in two rows (r0 and r0 + 8): their keys are read once.
    const int r0 = get<0>(tKVcKV(0));
    const int pos0 = c * kGatherTileN + r0, pos1 = pos0 + 8;
    float* const dv_row0 = dv_head + (pos0 < union_count ? int64_t(keys[pos0]) * key_stride : 0);
    float* const dv_row1 = dv_head + (pos1 < union_count ? int64_t(keys[pos1]) * key_stride : 0);
    const int64_t dk_minus_dv = dk_head - dv_head;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(tdVrdV); i += 2) {  // value pairs are adjacent columns of one key
      const bool upper = get<0>(tKVcKV(i)) != r0;
      if ((upper ? pos1 : pos0) < union_count) {
        float* dv = (upper ? dv_row1 : dv_row0) + get<1>(tKVcKV(i));
        atomicAdd(reinterpret_cast<float2*>(dv), make_float2(tdVrdV(i), tdVrdV(i + 1)));
        atomicAdd(reinterpret_cast<float2*>(dv + dk_minus_dv), make_float2(tdKrdK(i), tdKrdK(i + 1)));
      }
    }
    ++read;
  }

  // dQ of the tile's queries, scaled, straight to their rows (two per thread: r0 and r0 + 8).
  Tensor tdQcdQ = thr_dq.partition_C(make_identity_tensor(Shape<BM, D>{}));
  const int q0 = get<0>(tdQcdQ(0));
  Element* const dq_row0 = rows.valid(q0) ? rows.out_row(q0) : nullptr;
  Element* const dq_row1 = rows.valid(q0 + 8) ? rows.out_row(q0 + 8) : nullptr;
  CUTLASS_PRAGMA_UNROLL
  for (int i = 0; i < size(tdQrdQ); i += 2) {
    Element* dst = get<0>(tdQcdQ(i)) != q0 ? dq_row1 : dq_row0;
    if (dst != nullptr)
      *reinterpret_cast<uint32_t*>(dst + get<1>(tdQcdQ(i))) =
          Packed<Element>::from_float2(make_float2(tdQrdQ(i) * p.scale, tdQrdQ(i + 1) * p.scale));
  }
}

template <class Traits>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    sparse_gather_bwd_kernel(const __grid_constant__ SparseBwdParams p) {
  using Element = typename Traits::Element;
  using Pipeline = typename Traits::Pipeline;
  extern __shared__ char smem_buf[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem_buf);
  const SparseGatherBwdWorkspace ws = SparseGatherBwdWorkspace::carve(p);
  const GatherTile tile(p, ws.tiles);
  const int union_count = *tile.union_count;

  const auto pp = gather_pipeline_params<Traits>(ss);
  Pipeline pipe_k(ss.pipeline_k, pp);
  Pipeline pipe_v(ss.pipeline_v, pp);
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  const GatherRowMap<Element> dq_rows{
      static_cast<Element*>(p.dq) + tile.b * p.dq_batch_stride + tile.h * p.dq_head_stride,
      p.dq_row_stride,
      nullptr,
      0,
      tile.order,
      tile.rows,
      p.seqlen_q};
  if (threadIdx.x < 128) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (union_count > 0) {
      // Prologue: row t's Q, dO and statistics (zeros past the tile's queries).
      const int t = threadIdx.x;
      const bool valid = t < tile.rows;
      const int i = tile_query(tile.order, valid ? t : 0, p.seqlen_q);
      gather_row<Traits::kHeadDim>(make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{}), t,
                                   static_cast<const Element*>(p.q) + tile.b * p.q_batch_stride +
                                       int64_t(i) * p.q_row_stride + tile.h * p.q_head_stride,
                                   valid);
      gather_row<Traits::kHeadDim>(make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutQ{}), t,
                                   static_cast<const Element*>(p.dout) + tile.b * p.do_batch_stride +
                                       int64_t(i) * p.do_row_stride + tile.h * p.do_head_stride,
                                   valid);
      cp_async_8(&ss.stats[t], ws.row_stats + (int64_t(tile.b) * p.seqlen_q + i) * p.num_heads_q + tile.h, valid);
      cp_async_commit();
      sparse_gather_chunks<Traits>(p, tile, union_count, ss, pipe_k, pipe_v);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int mma_tid = threadIdx.x - 128;
    if (union_count > 0) {
      sparse_gather_bwd_mma<Traits>(p, ws, ss, pipe_k, pipe_v, tile.keys, union_count, dq_rows, tile.b,
                                    tile.h / (p.num_heads_q / p.num_heads_k), mma_tid);
    } else {  // no key listed in the whole tile: dQ = 0
      for (int idx = mma_tid; idx < kGatherTileM * (Traits::kHeadDim / 8); idx += Traits::kNumMmaThreads) {
        const int r = idx / (Traits::kHeadDim / 8), col = (idx % (Traits::kHeadDim / 8)) * 8;
        if (dq_rows.valid(r)) *reinterpret_cast<uint4*>(dq_rows.out_row(r) + col) = make_uint4(0, 0, 0, 0);
      }
    }
  }
}

}  // namespace attnx::sparse

// The two halves of the MLA decode mainloop: the producer (one TMA load per 64-token page,
// through a two-stage mbarrier pipeline) and the consumer warpgroups (wgmma + a softmax whose
// rows are split between the two warpgroups).
//
// Both halves walk the same pieces and pages in the same order (MlaSplitWalk), so the pipeline
// stage of a page is implied by its position in the walk.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "../common/named_barrier.cuh"
#include "../fmha/online_softmax.cuh"
#include "../fmha/wgmma_gemm.cuh"
#include "mla_decode_traits.h"
#include "mla_params.h"
#include "mla_split_walk.cuh"

namespace attnx::mla {

using namespace cute;
using fmha::exp2_ftz;
using fmha::quad_max;
using fmha::quad_sum;
using fmha::wgmma_gemm;

template <class Traits>
struct MlaDecodeKernelParams {
  MlaDecodeParams p;
  typename Traits::TmaKV tma_kv;
  typename Traits::GmemShapeKV shape_kv;
};

// Named barriers among the 256 consumer threads.
// kBarStage + wg: one warpgroup's epilogue staging (128 threads).
enum MlaBarrier : int { kBarQReady = 0, kBarRowMax = 1, kBarPReady = 2, kBarRowSum = 3, kBarStage = 4 };
__device__ __forceinline__ void consumer_sync(int id) { NamedBarrier::sync(id, 256); }

template <class Traits>
__device__ void mla_decode_load(const MlaDecodeKernelParams<Traits>& kp, typename Traits::SharedStorage& ss,
                                typename Traits::Pipeline& pipe, int part, int head_k) {
  const MlaDecodeParams& p = kp.p;
  Tensor mKV = kp.tma_kv.get_tma_tensor(kp.shape_kv)(_, _, head_k, _);  // (token, column, page)
  // Whole pages as static (64, 576) tiles: (64, 576, page).
  Tensor gKV = flat_divide(mKV, Shape<Int<Traits::kPage>, Int<Traits::kHeadDim>>{})(_, _, _0{}, _0{}, _);
  Tensor sKV = make_tensor(make_smem_ptr(ss.kv.data()), typename Traits::SmemLayoutKV{});
  auto [tKVg, tKVs] = tma_partition(kp.tma_kv, _0{}, Layout<_1>{}, group_modes<0, 2>(sKV), group_modes<0, 2>(gKV));
  auto write = cutlass::make_producer_start_state<typename Traits::Pipeline>();
  const auto hint = p.kv_evict_first ? TMA::CacheHintSm90::EVICT_FIRST : TMA::CacheHintSm90::EVICT_NORMAL;
  MlaSplitWalk walk(p, part);
  MlaPiece piece;
  while (walk.next(piece)) {
    const int* pages = p.block_table + piece.batch * p.block_table_stride;
    const int end = piece.page_end(Traits::kPage);
    for (int page = piece.page_begin(Traits::kPage); page < end; ++page) {
      // A page id outside the cache is not read: TMA fills boxes outside the tensor with zeros.
      const int page_id = pages[page];
      pipe.producer_acquire(write);
      copy(kp.tma_kv.with(*pipe.producer_get_barrier(write), 0, hint), tKVg(_, page_id), tKVs(_, write.index()));
      ++write;
    }
  }
  pipe.producer_tail(write);  // the CTA must not exit while its loads are in flight
}

// The query block of one piece into shared memory: rows (s, h) of this KV head's group; rows past
// the group are zero. cp.async writes through the generic proxy: fence before wgmma reads.
template <class Traits>
__device__ void mla_load_q(const MlaDecodeParams& p, typename Traits::SharedStorage& ss, int batch, int head_k,
                           int m_block, int mma_tid) {
  using Element = typename Traits::Element;
  constexpr int kChunks = Traits::kHeadDim / 8;  // 16-byte chunks per row
  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
  const int group = p.num_heads_q / p.num_heads_k, rows = p.rows_per_group();
  const Element* q = static_cast<const Element*>(p.q) + batch * p.q_batch_stride;
#pragma unroll 2
  for (int idx = mma_tid; idx < Traits::kBlockM * kChunks; idx += Traits::kNumMmaThreads) {
    const int r = idx / kChunks, c = (idx % kChunks) * 8;
    const int row = m_block * Traits::kBlockM + r;
    // The 128-byte swizzle permutes 16-byte chunks: the 8 elements from c stay contiguous.
    const uint32_t dst = cast_smem_ptr_to_uint(&sQ(r, c));
    if (row < rows) {
      const int s = row / group, h = head_k * group + row % group;
      const Element* src = q + s * p.q_row_stride + h * p.q_head_stride + c;
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
    } else {
      asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(dst), "r"(0));
    }
  }
  asm volatile("cp.async.wait_all;\n" ::: "memory");
  cutlass::arch::fence_view_async_shared();
  consumer_sync(kBarQReady);
}

// Softmax state of this thread's two rows, shared with the other consumer warpgroup: both see
// the same running max (exchanged per page), each keeps the sum over its own half of the keys.
struct MlaSoftmax {
  float row_max[2];
  float row_sum[2];
  float scale_log2;
  __device__ explicit MlaSoftmax(float scale) : scale_log2(scale * 1.4426950408889634f) {}
  __device__ void reset() {
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.f;
  }
};

// One consumer warpgroup over one piece's pages. O (tOrO) accumulates this warpgroup's 256 value
// columns, unnormalised; softmax holds the rows' state.
//
// Per page: S_n = Q K_n[half]^T; the warpgroups exchange row maxima (barrier RowMax, which also
// certifies that both finished reading P_{n-1}), write their half of P_n and meet again (barrier
// PReady) before O += P_n V_n[:, half] reads it.
template <class Traits, class TensorO>
__device__ void mla_decode_mma(const MlaDecodeParams& p, typename Traits::SharedStorage& ss,
                               typename Traits::Pipeline& pipe, typename Traits::PipelineState& read,
                               const MlaPiece& piece, int m_block, int mma_tid, TensorO& tOrO, MlaSoftmax& softmax) {
  using Element = typename Traits::Element;
  constexpr int kPage = Traits::kPage, kHalfN = Traits::kHalfN, kHalfV = Traits::kHalfV;
  const int wg = mma_tid / 128, tid = mma_tid % 128;
  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(tid);
  auto thr_pv = mma_pv.get_thread_slice(tid);
  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.kv.data()), typename Traits::SmemLayoutKV{});
  Tensor sVt = make_tensor(make_smem_ptr(ss.kv.data()), typename Traits::SmemLayoutVt{});
  Tensor sP = make_tensor(make_smem_ptr(ss.p.data()), typename Traits::SmemLayoutP{});
  // This warpgroup's keys (rows of K) and value columns (rows of V^T).
  Tensor sK_half = flat_divide(sK, Shape<Int<kHalfN>>{})(_, wg, _, _);     // (32, 576, stage)
  Tensor sVt_half = flat_divide(sVt, Shape<Int<kHalfV>>{})(_, wg, _, _);   // (256, 64, stage)
  Tensor sP_half = flat_divide(sP, Shape<_64, Int<kHalfN>>{})(_, _, _0{}, wg);   // (64, 32)
  Tensor tSrQ = thr_qk.partition_fragment_A(sQ);
  Tensor tSrK = thr_qk.partition_fragment_B(sK_half);   // (MMA, N, K, stage)
  Tensor tOrP = thr_pv.partition_fragment_A(sP);
  Tensor tOrV = thr_pv.partition_fragment_B(sVt_half);  // (MMA, N, K, stage)
  auto store_p = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, mma_qk);
  auto thr_store_p = store_p.get_thread_slice(tid);
  Tensor tPsP = thr_store_p.partition_D(sP_half);

  Tensor tScS = thr_qk.partition_C(make_identity_tensor(Shape<_64, Int<kHalfN>>{}));
  Tensor coord_rc = make_tensor(tScS.data(), fmha::accumulator_rowcol(tScS.layout()));
  static_assert(decltype(size<0>(coord_rc))::value == 2, "two rows per thread");

  // Keys visible to each row: all of the sequence, or causally up to the row's query token.
  const int group = p.num_heads_q / p.num_heads_k;
  int limit[2];
  CUTLASS_PRAGMA_UNROLL
  for (int mi = 0; mi < 2; ++mi) {
    const int row = m_block * Traits::kBlockM + get<0>(coord_rc(mi, 0));
    limit[mi] = p.causal ? piece.seqlen - p.seqlen_q + row / group + 1 : piece.seqlen;
  }
  const int min_limit = p.causal ? piece.seqlen - p.seqlen_q + (m_block * Traits::kBlockM) / group + 1 : piece.seqlen;
  const int page_begin = piece.page_begin(kPage), page_end = piece.page_end(kPage);

  auto scores = [&]() { return partition_fragment_C(mma_qk, Shape<_64, Int<kHalfN>>{}); };

  // Masked scores, this half's row maxima published; returns nothing, S updated in place.
  auto mask_and_publish_max = [&](auto& tSrS, int page) {
    Tensor s_rc = make_tensor(tSrS.data(), fmha::accumulator_rowcol(tSrS.layout()));
    const int key0 = page * kPage + wg * kHalfN;
    if (key0 + kHalfN > min_limit) {
      CUTLASS_PRAGMA_UNROLL
      for (int mi = 0; mi < 2; ++mi)
        CUTLASS_PRAGMA_UNROLL
        for (int ni = 0; ni < size<1>(s_rc); ++ni)
          if (key0 + get<1>(coord_rc(mi, ni)) >= limit[mi]) s_rc(mi, ni) = -INFINITY;
    }
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < 2; ++mi) {
      float m = -INFINITY;
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < size<1>(s_rc); ++ni) m = fmaxf(m, s_rc(mi, ni));
      m = quad_max(m);
      if (tid % 4 == 0) ss.row_max[wg][get<0>(coord_rc(mi, 0))] = m;
    }
  };

  // After barrier RowMax: the common max, exponentials, O rescaled, this half of P written.
  auto softmax_and_write_p = [&](auto& tSrS, bool first, int page) {
    Tensor s_rc = make_tensor(tSrS.data(), fmha::accumulator_rowcol(tSrS.layout()));
    Tensor o_rc = make_tensor(tOrO.data(), fmha::accumulator_rowcol(tOrO.layout()));
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < 2; ++mi) {
      const int r = get<0>(coord_rc(mi, 0));
      const float m = fmaxf(softmax.row_max[mi], fmaxf(ss.row_max[0][r], ss.row_max[1][r]));
      const float m_scaled = m == -INFINITY ? 0.f : m * softmax.scale_log2;
      const float old = softmax.row_max[mi];
      const float row_scale = first || old == -INFINITY ? 0.f : exp2_ftz((old - m) * softmax.scale_log2);
      float sum = 0.f;
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < size<1>(s_rc); ++ni) {
        const float e = exp2_ftz(s_rc(mi, ni) * softmax.scale_log2 - m_scaled);
        s_rc(mi, ni) = e;
        sum += e;
      }
      softmax.row_sum[mi] = softmax.row_sum[mi] * row_scale + sum;
      softmax.row_max[mi] = m;
      if (!first) {
        CUTLASS_PRAGMA_UNROLL
        for (int ni = 0; ni < size<1>(o_rc); ++ni) o_rc(mi, ni) *= row_scale;
      }
    }
    // Keys past the sequence end have P = 0, but 0 * NaN is NaN: clear this half's value columns
    // of those rows (whatever the cache holds there) before O += P V reads them.
    const int valid = piece.seqlen - page * kPage;
    if (valid < kPage) {
      Tensor sV = make_tensor(make_smem_ptr(ss.kv.data()), typename Traits::SmemLayoutKV{});
      const int stage = read.index();
      for (int idx = tid; idx < (kPage - valid) * (kHalfV / 8); idx += 128) {
        const int t = valid + idx / (kHalfV / 8), c = wg * kHalfV + (idx % (kHalfV / 8)) * 8;
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(cast_smem_ptr_to_uint(&sV(t, c, stage))),
                     "r"(0));
      }
    }
    Tensor rP = fmha::convert_fragment<Element>(tSrS, tSrS.layout());
    copy(store_p, thr_store_p.retile_S(rP), tPsP);
    cutlass::arch::fence_view_async_shared();
    consumer_sync(kBarPReady);
  };

  clear(tOrO);
  softmax.reset();
  for (int page = page_begin; page < page_end; ++page) {
    Tensor tSrS = scores();
    pipe.consumer_wait(read);
    wgmma_gemm<true, 0>(mma_qk, tSrQ, tSrK(_, _, _, read.index()), tSrS);
    mask_and_publish_max(tSrS, page);
    consumer_sync(kBarRowMax);
    softmax_and_write_p(tSrS, page == page_begin, page);
    // The page's stage is released as soon as O += P V has read it, before waiting for the next
    // page: the producer then has the next two pages in flight while this one finishes.
    wgmma_gemm<false, 0>(mma_pv, tOrP, tOrV(_, _, _, read.index()), tOrO);
    pipe.consumer_release(read);
    ++read;
  }
}

}  // namespace attnx::mla

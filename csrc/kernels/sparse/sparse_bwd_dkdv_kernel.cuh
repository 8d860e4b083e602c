// Sparse-attention backward, key side: one warp per (b, key j, KV head) walks the queries that list
// the key (the key-major lists of sparse_key_lists.cu) and accumulates
//   dV_j = sum_i P_ij dO_i,   dK_j = scale * sum_i dS_ij q_i,   dS_ij = P_ij (dO_i . v_j - delta_i),
// with P_ij = exp(scale * q_i . k_j - lse_i) recomputed, in registers: no atomics on dK/dV.
//
// Determinism: the fill pass leaves each key's list in atomic order, so the warp first sets one
// bit per listed query in a shared-memory bitmap (Lq * G bits) and then compacts the set bits into
// an ordered buffer of up to 1024 ids, walking the buffer whenever it is full. The queries are thus
// visited in increasing order, dealt round-robin to the warp's 4 row groups, and the groups merge
// in a fixed order: the same inputs give bit-identical dK/dV.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

#include "sparse_fwd_kernel.cuh"
#include "sparse_params.h"
#include "sparse_row.cuh"

namespace attnx::sparse {

constexpr int kQueryBuffer = 32 * 32;  // ids compacted from 32 bitmap words

// Shared-memory words one warp of the dK/dV kernel needs.
inline int64_t dkdv_warp_smem_words(const SparseFwdParams& p) {
  const int64_t ids = int64_t(p.seqlen_q) * (p.num_heads_q / p.num_heads_k);
  return (ids + 31) / 32 + kQueryBuffer;
}

__device__ __forceinline__ int warp_inclusive_sum(int x, int lane) {
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const int y = __shfl_up_sync(0xffffffffu, x, off);
    if (lane >= off) x += y;
  }
  return x;
}

// Two blocks per SM at D = 64: 128 registers (60 bytes of spills), twice the rows in flight of the
// uncapped 156 registers, which allowed one (measured 23.4 -> 15.1 ms at L 16384, H 16, k 512).
// At D = 128 the cap spilled 416 bytes: one block.
// Accumulates the contributions of the queries ids[0, n) (ascending) to dK/dV of one key: query
// e goes to row group e % 4, each group keeps R rows in flight.
template <class Elem, int D>
__device__ __forceinline__ void dkdv_accumulate(const SparseBwdParams& p, const float2* row_stats, const int* ids,
                                                int n, int b, int hk, int group, int sub,
                                                const float (&kf)[RowSlice<Elem, D>::kElems],
                                                const float (&vf)[RowSlice<Elem, D>::kElems],
                                                float (&dk)[RowSlice<Elem, D>::kElems],
                                                float (&dv)[RowSlice<Elem, D>::kElems]) {
  using Row = RowSlice<Elem, D>;
  constexpr int R = kStepRows<D>;
  const int G = p.num_heads_q / p.num_heads_k;
  for (int t0 = 0; t0 < n; t0 += R * kGroups) {
    Row qr[R], dor[R];
    float2 st[R];  // {lse2, delta}
#pragma unroll
    for (int u = 0; u < R; ++u) {
      const int e = t0 + u * kGroups + group;
      if (e < n) {
        const int id = ids[e], i = id / G, h = hk * G + (id - (id / G) * G);
        qr[u].load(static_cast<const Elem*>(p.q) + b * p.q_batch_stride + int64_t(i) * p.q_row_stride +
                       h * p.q_head_stride, sub);
        dor[u].load(static_cast<const Elem*>(p.dout) + b * p.do_batch_stride + int64_t(i) * p.do_row_stride +
                        h * p.do_head_stride, sub);
        st[u] = row_stats[(int64_t(b) * p.seqlen_q + i) * p.num_heads_q + h];
      } else {
        qr[u].zero(), dor[u].zero();
        st[u] = make_float2(INFINITY, 0.f);  // P = exp2(0 - inf) = 0
      }
    }
#pragma unroll
    for (int u = 0; u < R; ++u) {
      const float s = group_sum(qr[u].dot(kf));
      const float dp = group_sum(dor[u].dot(vf));
      const float pu = exp2_approx(s - st[u].x);
      dor[u].axpy(pu, dv);
      qr[u].axpy(pu * (dp - st[u].y), dk);
    }
  }
}

template <int D>
constexpr int kDkdvMinBlocks = D == 64 ? 2 : 1;

template <class Elem, int D>
__global__ void __launch_bounds__(256, kDkdvMinBlocks<D>)
    sparse_bwd_dkdv_kernel(const SparseBwdParams p, const SparseBwdWorkspace ws, int bitmap_words) {
  using Row = RowSlice<Elem, D>;
  constexpr int N = Row::kElems;
  extern __shared__ uint32_t smem[];
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32, group = lane / kGroupLanes, sub = lane % kGroupLanes;
  const int j = blockIdx.x * warps + warp, hk = blockIdx.y, b = blockIdx.z;
  if (j >= p.seqlen_k) return;
  const int G = p.num_heads_q / p.num_heads_k;
  const int64_t bh = int64_t(b) * p.num_heads_k + hk;
  uint32_t* bits = smem + int64_t(warp) * (bitmap_words + kQueryBuffer);
  int* ids = reinterpret_cast<int*>(bits + bitmap_words);

  const int seg_lo = ws.key_offset[bh * (p.seqlen_k + 1) + j], seg_hi = ws.key_offset[bh * (p.seqlen_k + 1) + j + 1];
  const int* list = ws.key_queries + bh * (int64_t(p.seqlen_q) * G * p.topk);

  float dk[N], dv[N];
#pragma unroll
  for (int e = 0; e < N; ++e) dk[e] = dv[e] = 0.f;

  if (seg_hi > seg_lo) {  // warp-uniform
    for (int w = lane; w < bitmap_words; w += 32) bits[w] = 0u;
    __syncwarp();
    for (int e = seg_lo + lane; e < seg_hi; e += 32) {
      const int id = list[e];
      atomicOr(bits + (id >> 5), 1u << (id & 31));
    }
    __syncwarp();
    float kf[N], vf[N];  // k_j * scale * log2(e): scores in log2 units, as lse2
    {
      Row x;
      x.load(static_cast<const Elem*>(p.k) + b * p.k_batch_stride + int64_t(j) * p.k_row_stride +
                 hk * p.k_head_stride, sub);
      x.widen(kf, p.scale * kLog2e);
      x.load(static_cast<const Elem*>(p.v) + b * p.v_batch_stride + int64_t(j) * p.v_row_stride +
                 hk * p.v_head_stride, sub);
      x.widen(vf);
    }
    // Compact the bitmap into ids (ascending), processing the buffer whenever the next window
    // would overflow it: a typical list (~k entries) is walked in one go.
    int filled = 0;
    for (int w0 = 0; w0 < bitmap_words; w0 += 32) {
      uint32_t word = w0 + lane < bitmap_words ? bits[w0 + lane] : 0u;
      const int n = __popc(word);
      const int incl = warp_inclusive_sum(n, lane);
      const int total = __shfl_sync(0xffffffffu, incl, 31);
      if (total == 0) continue;  // warp-uniform
      if (filled + total > kQueryBuffer) {
        dkdv_accumulate<Elem, D>(p, ws.row_stats, ids, filled, b, hk, group, sub, kf, vf, dk, dv);
        filled = 0;
        __syncwarp();  // ids is rewritten below
      }
      for (int pos = filled + incl - n; word != 0u; word &= word - 1u)
        ids[pos++] = (w0 + lane) * 32 + __ffs(word) - 1;
      filled += total;
      __syncwarp();
    }
    dkdv_accumulate<Elem, D>(p, ws.row_stats, ids, filled, b, hk, group, sub, kf, vf, dk, dv);
  }
  sum_over_groups(dk);
  sum_over_groups(dv);
  if (group == 0) {
    store_row_slice<Elem, D>(static_cast<Elem*>(p.dk) + b * p.dk_batch_stride + int64_t(j) * p.dk_row_stride +
                                 hk * p.dk_head_stride, sub, dk, p.scale);
    store_row_slice<Elem, D>(static_cast<Elem*>(p.dv) + b * p.dv_batch_stride + int64_t(j) * p.dv_row_stride +
                                 hk * p.dv_head_stride, sub, dv, 1.f);
  }
}

}  // namespace attnx::sparse

// Sparse-attention backward, query side: one warp per query row (b, i, h) walks the row's listed
// keys as the forward does and accumulates dQ; it also writes the row's lse (log2 units) and
// delta = rowsum(dO * O) - dlse, which the key side (sparse_bwd_dkdv_kernel.cuh) reads per row.
//
// With P = exp(S - lse) recomputed from the forward's lse:
//   dP_j = dO . v_j,  dS_j = P_j (dP_j - delta),  dQ = scale * sum_j dS_j k_j.
// (dlse enters through delta: d lse / d S_j = P_j.)
#pragma once

#include <cuda_runtime.h>

#include <cmath>

#include "sparse_fwd_kernel.cuh"  // slot helpers
#include "sparse_params.h"
#include "sparse_row.cuh"

namespace attnx::sparse {

template <class Elem, int D, int kWarps>
__global__ void __launch_bounds__(kWarps * 32) sparse_bwd_dq_kernel(const SparseBwdParams p, float2* row_stats) {
  using Row = RowSlice<Elem, D>;
  constexpr int N = Row::kElems;
  const int lane = threadIdx.x % 32, group = lane / kGroupLanes, sub = lane % kGroupLanes;
  const int i = blockIdx.x * kWarps + threadIdx.x / 32, h = blockIdx.y, b = blockIdx.z;
  if (i >= p.seqlen_q) return;
  const int hk = h / (p.num_heads_q / p.num_heads_k);
  const Elem* k_base = static_cast<const Elem*>(p.k) + b * p.k_batch_stride + hk * p.k_head_stride;
  const Elem* v_base = static_cast<const Elem*>(p.v) + b * p.v_batch_stride + hk * p.v_head_stride;
  const int* idx_row = p.indices + b * p.idx_batch_stride + int64_t(i) * p.idx_row_stride + h * p.idx_head_stride;
  const int64_t row = (int64_t(b) * p.seqlen_q + i) * p.num_heads_q + h;

  float qf[N], dof[N];
  float delta;
  {
    Row x;
    x.load(static_cast<const Elem*>(p.dout) + b * p.do_batch_stride + int64_t(i) * p.do_row_stride +
               h * p.do_head_stride, sub);
    x.widen(dof);
    x.load(static_cast<const Elem*>(p.out) + b * p.o_batch_stride + int64_t(i) * p.o_row_stride + h * p.o_head_stride,
           sub);
    delta = group_sum(x.dot(dof)) - (p.dlse != nullptr ? p.dlse[row] : 0.f);
    x.load(static_cast<const Elem*>(p.q) + b * p.q_batch_stride + int64_t(i) * p.q_row_stride + h * p.q_head_stride,
           sub);
    x.widen(qf, p.scale * kLog2e);
  }
  const float lse2 = p.lse[row] * kLog2e;
  if (lane == 0) row_stats[row] = make_float2(lse2, delta);
  float dq[N];
#pragma unroll
  for (int e = 0; e < N; ++e) dq[e] = 0.f;

  // A row without a valid key has lse = -inf and no listed key: nothing to accumulate.
  constexpr int R = kStepRows<D>;
  for (int t0 = 0; lse2 != -INFINITY && t0 < p.topk; t0 += kBatchSlots) {
    const int my_slot = load_slot(idx_row, t0 + lane, p.topk, p.seqlen_k);
#pragma unroll
    for (int s0 = 0; s0 < kBatchSlots; s0 += R * kGroups) {
      Row kr[R], vr[R];
      int j[R];
      gather_kv_rows<Elem, D, R>(p, k_base, v_base, my_slot, s0, group, sub, kr, vr, j);
#pragma unroll
      for (int u = 0; u < R; ++u) {
        const float s = group_sum(kr[u].dot(qf));
        const float dp = group_sum(vr[u].dot(dof));
        const float pu = j[u] >= 0 ? exp2_approx(s - lse2) : 0.f;
        kr[u].axpy(pu * (dp - delta), dq);
      }
    }
  }
  sum_over_groups(dq);
  if (group == 0)
    store_row_slice<Elem, D>(static_cast<Elem*>(p.dq) + b * p.dq_batch_stride + int64_t(i) * p.dq_row_stride +
                                 h * p.dq_head_stride, sub, dq, p.scale);
}

}  // namespace attnx::sparse

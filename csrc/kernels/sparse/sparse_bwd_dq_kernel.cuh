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
  using Walk = QueryRowWalk<Elem, D, kWarps>;
  using Row = typename Walk::Row;
  constexpr int N = Row::kElems, R = Walk::R;
  const Walk w(p);
  if (w.i >= p.seqlen_q) return;
  const int64_t row = w.lse_row(p);

  float qf[N], dof[N];
  float delta;
  {
    Row x;
    x.load(w.at(static_cast<const Elem*>(p.dout), p.do_batch_stride, p.do_row_stride, p.do_head_stride), w.sub);
    x.widen(dof);
    x.load(w.at(static_cast<const Elem*>(p.out), p.o_batch_stride, p.o_row_stride, p.o_head_stride), w.sub);
    delta = group_sum(x.dot(dof)) - (p.dlse != nullptr ? p.dlse[row] : 0.f);
    x.load(w.at(static_cast<const Elem*>(p.q), p.q_batch_stride, p.q_row_stride, p.q_head_stride), w.sub);
    x.widen(qf, p.scale * kLog2e);
  }
  const float lse2 = p.lse[row] * kLog2e;
  if (w.lane == 0) row_stats[row] = make_float2(lse2, delta);
  float dq[N];
#pragma unroll
  for (int e = 0; e < N; ++e) dq[e] = 0.f;

  // A row without a valid key has lse = -inf and no listed key: nothing to accumulate.
  if (lse2 != -INFINITY) {  // warp-uniform
    w.for_each_step(p, [&](const Row (&kr)[R], const Row (&vr)[R], const int (&j)[R]) {
#pragma unroll
      for (int u = 0; u < R; ++u) {
        const float s = group_sum(kr[u].dot(qf));
        const float dp = group_sum(vr[u].dot(dof));
        const float pu = j[u] >= 0 ? exp2_approx(s - lse2) : 0.f;
        kr[u].axpy(pu * (dp - delta), dq);
      }
    });
  }
  sum_over_groups(dq);
  if (w.group == 0)
    store_row_slice<Elem, D>(w.at(static_cast<Elem*>(p.dq), p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride),
                             w.sub, dq, p.scale);
}

}  // namespace attnx::sparse

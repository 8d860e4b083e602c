// Sparse-attention forward: one warp per query row (b, i, h), gathering the row's listed keys.
//
// Why gathers on CUDA cores rather than tiles on tensor cores: rows of a tile share few keys when
// the lists come from a per-query selection (at k = L/32 and random-looking lists, a 64-query tile
// touches ~87% of all keys), so a tile would load almost every key to use 1/32 of them. Per query,
// the work is 4 * D flops per 4 * D bytes gathered: the bound is the gather rate from L2, which
// this kernel feeds with 32 rows of K and V (16 at D = 128) in flight per warp.
//
// Each of the warp's 4 row groups keeps its own online softmax (max m, sum l, accumulator) over the
// keys it took (slots group, group + 4, ... of each batch of 32); the groups merge at the end.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

#include "sparse_params.h"
#include "sparse_row.cuh"

namespace attnx::sparse {

constexpr int kBatchSlots = 32;  // index slots read per warp at a time, one per lane

// Rows each group keeps in flight per step: 8 at D = 64, 4 at D = 128 (the same 1 KB per group;
// more would cost registers and, with them, warps per SM).
template <int D>
constexpr int kStepRows = 512 / D;

// The key of slot `slot` (0..31) of a batch whose slots are spread one per lane (my_slot).
__device__ __forceinline__ int slot_key(int my_slot, int slot) { return __shfl_sync(0xffffffffu, my_slot, slot); }

// An index outside [0, Lk) reads as empty (-1).

__device__ __forceinline__ int load_slot(const int* idx_row, int t, int topk, int seqlen_k) {
  int j = t < topk ? __ldg(idx_row + t) : -1;
  return static_cast<unsigned>(j) < static_cast<unsigned>(seqlen_k) ? j : -1;
}

// One warp's query row (b, i, h) of the forward and dQ kernels: its lanes, where it reads, and the
// walk over its listed keys: per batch of 32 slots (one per lane), steps of R rows per group, the
// group taking slots s0 + u * 4 + group; empty slots load zeros and report key -1.
template <class Elem, int D, int kWarps>
struct QueryRowWalk {
  using Row = RowSlice<Elem, D>;
  static constexpr int R = kStepRows<D>;
  int lane, group, sub, i, h, b;
  const Elem* k_base;
  const Elem* v_base;
  const int* idx_row;

  __device__ __forceinline__ explicit QueryRowWalk(const SparseFwdParams& p)
      : lane(threadIdx.x % 32), group(lane / kGroupLanes), sub(lane % kGroupLanes),
        i(blockIdx.x * kWarps + threadIdx.x / 32), h(blockIdx.y), b(blockIdx.z) {
    const int hk = h / (p.num_heads_q / p.num_heads_k);
    k_base = static_cast<const Elem*>(p.k) + b * p.k_batch_stride + hk * p.k_head_stride;
    v_base = static_cast<const Elem*>(p.v) + b * p.v_batch_stride + hk * p.v_head_stride;
    idx_row = p.indices + b * p.idx_batch_stride + int64_t(i) * p.idx_row_stride + h * p.idx_head_stride;
  }
  // The row's place in a [B, Lq, H, D] tensor (q, out, dout, dq) and in lse [B, Lq, H].
  template <class Ptr>
  __device__ __forceinline__ Ptr at(Ptr base, int64_t batch_stride, int64_t row_stride, int64_t head_stride) const {
    return base + b * batch_stride + int64_t(i) * row_stride + h * head_stride;
  }
  __device__ __forceinline__ int64_t lse_row(const SparseFwdParams& p) const {
    return (int64_t(b) * p.seqlen_q + i) * p.num_heads_q + h;
  }
  // f(kr, vr, j) for each step: the step's K and V rows and keys (every lane calls it).
  template <class F>
  __device__ __forceinline__ void for_each_step(const SparseFwdParams& p, F&& f) const {
    for (int t0 = 0; t0 < p.topk; t0 += kBatchSlots) {
      const int my_slot = load_slot(idx_row, t0 + lane, p.topk, p.seqlen_k);
#pragma unroll
      for (int s0 = 0; s0 < kBatchSlots; s0 += R * kGroups) {
        Row kr[R], vr[R];
        int j[R];
#pragma unroll
        for (int u = 0; u < R; ++u) {
          j[u] = slot_key(my_slot, s0 + u * kGroups + group);
          if (j[u] >= 0) {
            kr[u].load(k_base + int64_t(j[u]) * p.k_row_stride, sub);
            vr[u].load(v_base + int64_t(j[u]) * p.v_row_stride, sub);
          } else {
            kr[u].zero(), vr[u].zero();
          }
        }
        f(kr, vr, j);
      }
    }
  }
};

template <class Elem, int D, int kWarps>
__global__ void __launch_bounds__(kWarps * 32) sparse_fwd_kernel(const SparseFwdParams p) {
  using Walk = QueryRowWalk<Elem, D, kWarps>;
  using Row = typename Walk::Row;
  constexpr int N = Row::kElems, R = Walk::R;
  const Walk w(p);
  if (w.i >= p.seqlen_q) return;

  float qf[N];  // q * scale * log2(e): scores come out in log2 units
  {
    Row q;
    q.load(w.at(static_cast<const Elem*>(p.q), p.q_batch_stride, p.q_row_stride, p.q_head_stride), w.sub);
    q.widen(qf, p.scale * kLog2e);
  }
  float m = -INFINITY, l = 0.f, acc[N];
#pragma unroll
  for (int e = 0; e < N; ++e) acc[e] = 0.f;

  w.for_each_step(p, [&](const Row (&kr)[R], const Row (&vr)[R], const int (&j)[R]) {
    float s[R], m_new = m;
#pragma unroll
    for (int u = 0; u < R; ++u) {
      s[u] = group_sum(kr[u].dot(qf));
      s[u] = j[u] >= 0 ? s[u] : -INFINITY;
      m_new = fmaxf(m_new, s[u]);
    }
    if (m_new != -INFINITY) {  // else nothing valid in this group yet (group-uniform)
      const float corr = exp2_approx(m - m_new);  // m = -inf: 0
      l *= corr;
#pragma unroll
      for (int e = 0; e < N; ++e) acc[e] *= corr;
#pragma unroll
      for (int u = 0; u < R; ++u) {
        const float pu = exp2_approx(s[u] - m_new);  // empty slot: exp2(-inf) = 0
        l += pu;
        vr[u].axpy(pu, acc);
      }
      m = m_new;
    }
  });

  // Merge the 4 groups' softmax states: rescale each to the common max, then sum.
  float m_all = m;
#pragma unroll
  for (int off = kGroupLanes; off < 32; off *= 2) m_all = fmaxf(m_all, __shfl_xor_sync(0xffffffffu, m_all, off));
  const float rescale = m == -INFINITY ? 0.f : exp2_approx(m - m_all);
  l *= rescale;
#pragma unroll
  for (int e = 0; e < N; ++e) acc[e] *= rescale;
  float ls[1] = {l};
  sum_over_groups(ls);
  sum_over_groups(acc);

  if (w.group == 0) {
    const bool empty = ls[0] == 0.f;
    store_row_slice<Elem, D>(w.at(static_cast<Elem*>(p.out), p.o_batch_stride, p.o_row_stride, p.o_head_stride),
                             w.sub, acc, empty ? 0.f : 1.f / ls[0]);
    if (w.sub == 0) p.lse[w.lse_row(p)] = empty ? -INFINITY : (m_all + __log2f(ls[0])) / kLog2e;
  }
}

}  // namespace attnx::sparse

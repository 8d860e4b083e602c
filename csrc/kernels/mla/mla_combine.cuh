// Combine of split sequences: the pieces' normalised partial outputs O_i and lse_i merge exactly
// as out = sum_i exp(lse_i - lse) O_i with lse = log sum_i exp(lse_i).
//
// One block per query row, four values of the row per thread. Sequences with a single piece were
// written by the decode kernel and are skipped here. A long sequence among short ones is cut into
// many pieces (one per SM it spreads over): the loops over pieces are unrolled so that several
// pieces' loads are in flight at once (one dependent load per piece would make the combine
// latency-bound).
#pragma once

#include <cuda_runtime.h>
#include <cutlass/array.h>

#include "mla_params.h"

namespace attnx::mla {

template <int kHeadDimV>
struct MlaCombineShape {
  static constexpr int kThreads = kHeadDimV / 4;  // one float4 each
};

template <typename Element, int kHeadDimV>
__global__ void __launch_bounds__(MlaCombineShape<kHeadDimV>::kThreads)
    mla_combine_kernel(const MlaDecodeParams p) {
  const int rows = p.rows_per_group();
  const int b = blockIdx.x / rows, row = blockIdx.x % rows, head_k = blockIdx.y;
  const int first = p.num_splits[b], n = p.num_splits[b + 1] - first;
  if (n <= 1) return;
  auto acc_row = [&](int i) { return ((int64_t)(first + i) * p.num_heads_k + head_k) * rows + row; };
  const float* __restrict__ lse_accum = p.lse_accum;
  using Quad = cutlass::AlignedArray<Element, 4>;  // this thread's 4 values of a partial row (mla_params.h)
  const Quad* __restrict__ o_accum = static_cast<const Quad*>(p.o_accum);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __shared__ float weight[32];
  __shared__ float row_lse;

  // Warp 0: lse = log sum_i exp(lse_i), one load per lane and piece (the first 32 kept in a register).
  if (warp == 0) {
    const float mine = lane < n ? lse_accum[acc_row(lane)] : -INFINITY;
    float m = mine;
    for (int i = lane + 32; i < n; i += 32) m = fmaxf(m, lse_accum[acc_row(i)]);
    for (int o = 16; o; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
    float sum = m == -INFINITY ? 0.f : __expf(mine - m);
    if (m != -INFINITY)
      for (int i = lane + 32; i < n; i += 32) sum += __expf(lse_accum[acc_row(i)] - m);
    for (int o = 16; o; o /= 2) sum += __shfl_xor_sync(0xffffffff, sum, o);
    if (lane == 0) row_lse = m == -INFINITY ? -INFINITY : m + __logf(sum);
  }
  __syncthreads();
  const float lse = row_lse;

  // Weights of 32 pieces at a time through shared memory; every thread owns one float4 of the row
  // and keeps several pieces' loads in flight.
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  if (lse != -INFINITY) {
    for (int base = 0; base < n; base += 32) {
      if (warp == 0) weight[lane] = base + lane < n ? __expf(lse_accum[acc_row(base + lane)] - lse) : 0.f;
      __syncthreads();
      const int count = min(32, n - base);
#pragma unroll 16
      for (int j = 0; j < count; ++j) {
        const float w = weight[j];  // 0 for an empty piece (lse_i = -inf)
        const Quad v = o_accum[acc_row(base + j) * (kHeadDimV / 4) + threadIdx.x];
        acc.x += w * float(v[0]), acc.y += w * float(v[1]), acc.z += w * float(v[2]), acc.w += w * float(v[3]);
      }
      __syncthreads();
    }
  }
  const int group = p.num_heads_q / p.num_heads_k;
  const int s = row / group, h = head_k * group + row % group;
  Element* out = static_cast<Element*>(p.out) + b * p.o_batch_stride + s * p.o_row_stride + h * p.o_head_stride +
                 4 * threadIdx.x;
  cutlass::Array<Element, 4> o4;
  o4[0] = Element(acc.x), o4[1] = Element(acc.y), o4[2] = Element(acc.z), o4[3] = Element(acc.w);
  *reinterpret_cast<cutlass::Array<Element, 4>*>(out) = o4;  // 8-byte store (rows are 16-byte aligned)
  if (threadIdx.x == 0) p.lse[((int64_t)b * p.seqlen_q + s) * p.num_heads_q + h] = lse;
}

}  // namespace attnx::mla

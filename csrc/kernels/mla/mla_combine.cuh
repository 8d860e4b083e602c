// Combine of split sequences: the pieces' normalised partial outputs O_i and lse_i merge exactly
// as out = sum_i exp(lse_i - lse) O_i with lse = log sum_i exp(lse_i).
//
// One warp per query row; sequences with a single piece were written by the decode kernel and
// are skipped here.
#pragma once

#include <cuda_runtime.h>

#include "mla_params.h"

namespace attnx::mla {

constexpr int kCombineRowsPerBlock = 8;

template <typename Element, int kHeadDimV>
__global__ void __launch_bounds__(32 * kCombineRowsPerBlock)
    mla_combine_kernel(const MlaDecodeParams p) {
  static_assert(kHeadDimV % 128 == 0, "each lane owns float4 chunks of the row");
  const int b = blockIdx.x, head_k = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rows = p.rows_per_group(), row = blockIdx.z * kCombineRowsPerBlock + warp;
  const int first = p.num_splits[b], n = p.num_splits[b + 1] - first;
  if (n <= 1 || row >= rows) return;
  auto acc_row = [&](int i) { return ((int64_t)(first + i) * p.num_heads_k + head_k) * rows + row; };

  float m = -INFINITY;
  for (int i = lane; i < n; i += 32) m = fmaxf(m, p.lse_accum[acc_row(i)]);
  for (int o = 16; o; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
  float sum = 0.f;
  if (m != -INFINITY)
    for (int i = lane; i < n; i += 32) sum += __expf(p.lse_accum[acc_row(i)] - m);
  for (int o = 16; o; o /= 2) sum += __shfl_xor_sync(0xffffffff, sum, o);
  const float lse = m == -INFINITY ? -INFINITY : m + __logf(sum);

  constexpr int kChunks = kHeadDimV / 128;  // float4 per lane
  float4 acc[kChunks];
  for (int j = 0; j < kChunks; ++j) acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
  if (lse != -INFINITY) {
    for (int i = 0; i < n; ++i) {
      const int64_t r = acc_row(i);
      const float w = __expf(p.lse_accum[r] - lse);  // 0 for an empty piece (lse_i = -inf)
      const float4* o = reinterpret_cast<const float4*>(p.o_accum + r * kHeadDimV);
      for (int j = 0; j < kChunks; ++j) {
        const float4 v = o[lane + 32 * j];
        acc[j].x += w * v.x, acc[j].y += w * v.y, acc[j].z += w * v.z, acc[j].w += w * v.w;
      }
    }
  }
  const int group = p.num_heads_q / p.num_heads_k;
  const int s = row / group, h = head_k * group + row % group;
  Element* out = static_cast<Element*>(p.out) + b * p.o_batch_stride + s * p.o_row_stride + h * p.o_head_stride;
  for (int j = 0; j < kChunks; ++j) {
    const int c = 4 * (lane + 32 * j);
    out[c] = Element(acc[j].x), out[c + 1] = Element(acc[j].y);
    out[c + 2] = Element(acc[j].z), out[c + 3] = Element(acc[j].w);
  }
  if (lane == 0) p.lse[((int64_t)b * p.seqlen_q + s) * p.num_heads_q + h] = lse;
}

}  // namespace attnx::mla

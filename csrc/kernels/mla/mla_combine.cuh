// Combine of split sequences: the pieces' normalised partial outputs O_i and lse_i merge exactly
// as out = sum_i exp(lse_i - lse) O_i with lse = log sum_i exp(lse_i). Sequences with a single
// piece were written by the decode kernel and are skipped here.
//
// Split rows come in two kinds, and one block shape serves neither well:
// - rows of a few pieces (every sequence split in 2-3: the memory-bound batches): a warp per row,
//   four rows per block, no block barrier; each lane owns 16 of the row's values (two 16-byte
//   loads per piece) and issues the first two pieces' loads before the lse's, which they do not
//   depend on, so a two-piece row costs one memory latency;
// - rows of many pieces (a long sequence among short ones, more than kHeavyPieces): four blocks
//   per row at the front of the grid (launched first), each a quarter of the columns, its four
//   warps taking alternate pieces, so a 60-piece row is read by 16 warps on 4 SMs about two loads
//   deep instead of by one block walking them all.
#pragma once

#include <cuda_runtime.h>
#include <cutlass/array.h>

#include "mla_params.h"

namespace attnx::mla {

template <int kHeadDimV>
struct MlaCombineShape {
  static constexpr int kThreads = 128;
  static constexpr int kRowsPerBlock = kThreads / 32;
  static constexpr int kHeavyPieces = 8;
  static constexpr int kQuarters = 4;
  static constexpr int kOcts = kHeadDimV / 8 / 32;  // 16-byte loads per lane and piece
};

// Heavy rows: every sequence with more than kHeavyPieces pieces, one (sequence, row, quarter) at
// a time; blocks of one slot take every heavy_slots-th such sequence. Each warp scans the split
// counts itself (the same ballots in every warp, so no barrier is needed to agree on them).
template <typename Element, int kHeadDimV>
__device__ void mla_combine_heavy(const MlaDecodeParams& p, int heavy_slots) {
  using Shape = MlaCombineShape<kHeadDimV>;
  static_assert(kHeadDimV == 512, "a quarter of the row is a float4 per lane");
  const int rows = p.rows_per_group(), head_k = blockIdx.y;
  const int slot = blockIdx.x / (rows * Shape::kQuarters);
  const int row = blockIdx.x / Shape::kQuarters % rows, quarter = blockIdx.x % Shape::kQuarters;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  using Quad = cutlass::AlignedArray<Element, 4>;
  const float* __restrict__ lse_accum = p.lse_accum;
  const Quad* __restrict__ o_accum = static_cast<const Quad*>(p.o_accum);
  __shared__ float weight[128];
  __shared__ float red[4];
  __shared__ float4 part[3][32];
  const int group = p.num_heads_q / p.num_heads_k;
  const int s = row / group, h = head_k * group + row % group;
  int seen = 0;
  for (int base = 0; base < p.batch; base += 32) {
    const int bl = base + lane;
    const int nl = bl < p.batch ? p.num_splits[bl + 1] - p.num_splits[bl] : 0;
    unsigned heavy = __ballot_sync(0xffffffff, nl > Shape::kHeavyPieces);
    while (heavy) {
      const int b = base + __ffs(heavy) - 1;
      heavy &= heavy - 1;
      if (seen++ % heavy_slots != slot) continue;
      const int first = p.num_splits[b], n = p.num_splits[b + 1] - first;
      auto acc_row = [&](int i) { return ((int64_t)(first + i) * p.num_heads_k + head_k) * rows + row; };
      // The first pieces of each warp are loaded before the lse (they do not depend on it).
      constexpr int kPrefetch = 4;
      Quad pre[kPrefetch];
#pragma unroll
      for (int k = 0; k < kPrefetch; ++k)
        if (warp + 4 * k < n) pre[k] = o_accum[acc_row(warp + 4 * k) * (kHeadDimV / 4) + quarter * 32 + lane];
      // lse over all pieces: each thread's first piece kept in a register, block max and sum.
      const float mine = (int)threadIdx.x < n ? lse_accum[acc_row(threadIdx.x)] : -INFINITY;
      float m = mine;
      for (int i = threadIdx.x + 128; i < n; i += 128) m = fmaxf(m, lse_accum[acc_row(i)]);
      for (int o = 16; o; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
      if (lane == 0) red[warp] = m;
      __syncthreads();
      m = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
      __syncthreads();
      float sum = m == -INFINITY ? 0.f : __expf(mine - m);
      if (m != -INFINITY)
        for (int i = threadIdx.x + 128; i < n; i += 128) sum += __expf(lse_accum[acc_row(i)] - m);
      for (int o = 16; o; o /= 2) sum += __shfl_xor_sync(0xffffffff, sum, o);
      if (lane == 0) red[warp] = sum;
      __syncthreads();
      sum = red[0] + red[1] + red[2] + red[3];
      const float lse = m == -INFINITY ? -INFINITY : m + __logf(sum);
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
      if (lse != -INFINITY) {
        for (int cbase = 0; cbase < n; cbase += 128) {
          const int i = cbase + threadIdx.x;
          const float li = cbase == 0 ? mine : (i < n ? lse_accum[acc_row(i)] : -INFINITY);
          weight[threadIdx.x] = i < n ? __expf(li - lse) : 0.f;
          __syncthreads();
          const int count = min(128, n - cbase);
          int j0 = warp;
          if (cbase == 0) {
#pragma unroll
            for (int k = 0; k < kPrefetch; ++k)
              if (warp + 4 * k < n) {
                const float w = weight[warp + 4 * k];
                acc.x += w * float(pre[k][0]), acc.y += w * float(pre[k][1]), acc.z += w * float(pre[k][2]),
                    acc.w += w * float(pre[k][3]);
              }
            j0 = warp + 4 * kPrefetch;
          }
#pragma unroll 4
          for (int j = j0; j < count; j += 4) {
            const float w = weight[j];
            const Quad v = o_accum[acc_row(cbase + j) * (kHeadDimV / 4) + quarter * 32 + lane];
            acc.x += w * float(v[0]), acc.y += w * float(v[1]), acc.z += w * float(v[2]), acc.w += w * float(v[3]);
          }
          __syncthreads();
        }
      }
      if (warp > 0) part[warp - 1][lane] = acc;
      __syncthreads();
      if (warp == 0) {
        for (int w = 0; w < 3; ++w)
          acc.x += part[w][lane].x, acc.y += part[w][lane].y, acc.z += part[w][lane].z, acc.w += part[w][lane].w;
        Element* out = static_cast<Element*>(p.out) + b * p.o_batch_stride + s * p.o_row_stride +
                       h * p.o_head_stride + 4 * (quarter * 32 + lane);
        cutlass::Array<Element, 4> o4;
        o4[0] = Element(acc.x), o4[1] = Element(acc.y), o4[2] = Element(acc.z), o4[3] = Element(acc.w);
        *reinterpret_cast<cutlass::Array<Element, 4>*>(out) = o4;
        if (quarter == 0 && lane == 0) p.lse[((int64_t)b * p.seqlen_q + s) * p.num_heads_q + h] = lse;
      }
      __syncthreads();  // red, weight and part are reused by the next sequence
    }
  }
}

// One row of a few pieces, one warp.
template <typename Element, int kHeadDimV>
__device__ void mla_combine_row_warp(const MlaDecodeParams& p, int64_t index, int head_k, bool heavy_on) {
  using Shape = MlaCombineShape<kHeadDimV>;
  constexpr int kOcts = Shape::kOcts;
  const int rows = p.rows_per_group();
  const int b = (int)(index / rows), row = (int)(index % rows);
  const int first = p.num_splits[b], n = p.num_splits[b + 1] - first;
  if (n <= 1 || (heavy_on && n > Shape::kHeavyPieces)) return;
  const int lane = threadIdx.x % 32;
  using Oct = cutlass::AlignedArray<Element, 8>;
  const float* __restrict__ lse_accum = p.lse_accum;
  const Oct* __restrict__ o_accum = static_cast<const Oct*>(p.o_accum);
  auto acc_row = [&](int i) { return ((int64_t)(first + i) * p.num_heads_k + head_k) * rows + row; };
  auto load = [&](int i, int c) { return o_accum[acc_row(i) * (kHeadDimV / 8) + c * 32 + lane]; };
  // n >= 2: the first two pieces' values, issued before (and independent of) the lse.
  Oct v0[kOcts], v1[kOcts];
#pragma unroll
  for (int c = 0; c < kOcts; ++c) v0[c] = load(0, c), v1[c] = load(1, c);
  const float mine = lane < n ? lse_accum[acc_row(lane)] : -INFINITY;
  float m = mine;
  for (int i = lane + 32; i < n; i += 32) m = fmaxf(m, lse_accum[acc_row(i)]);
  for (int o = 16; o; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
  float sum = m == -INFINITY ? 0.f : __expf(mine - m);
  if (m != -INFINITY)
    for (int i = lane + 32; i < n; i += 32) sum += __expf(lse_accum[acc_row(i)] - m);
  for (int o = 16; o; o /= 2) sum += __shfl_xor_sync(0xffffffff, sum, o);
  const float lse = m == -INFINITY ? -INFINITY : m + __logf(sum);
  float acc[kOcts][8];
#pragma unroll
  for (int c = 0; c < kOcts; ++c)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[c][e] = 0.f;
  if (lse != -INFINITY) {
    const float w = lane < n ? __expf(mine - lse) : 0.f;  // piece `lane`'s weight (0 if empty)
    auto add = [&](float wj, const Oct(&v)[kOcts]) {
#pragma unroll
      for (int c = 0; c < kOcts; ++c)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[c][e] += wj * float(v[c][e]);
    };
    add(__shfl_sync(0xffffffff, w, 0), v0);
    add(__shfl_sync(0xffffffff, w, 1), v1);
#pragma unroll 1
    for (int j = 2; j < n; ++j) {
      Oct v[kOcts];
#pragma unroll
      for (int c = 0; c < kOcts; ++c) v[c] = load(j, c);
      const float wj = j < 32 ? __shfl_sync(0xffffffff, w, j) : __expf(lse_accum[acc_row(j)] - lse);
      add(wj, v);
    }
  }
  const int group = p.num_heads_q / p.num_heads_k;
  const int s = row / group, h = head_k * group + row % group;
  Element* out = static_cast<Element*>(p.out) + b * p.o_batch_stride + s * p.o_row_stride + h * p.o_head_stride;
#pragma unroll
  for (int c = 0; c < kOcts; ++c) {
    cutlass::Array<Element, 8> o8;
#pragma unroll
    for (int e = 0; e < 8; ++e) o8[e] = Element(acc[c][e]);
    *reinterpret_cast<cutlass::Array<Element, 8>*>(out + 8 * (c * 32 + lane)) = o8;  // rows are 16-byte aligned
  }
  if (lane == 0) p.lse[((int64_t)b * p.seqlen_q + s) * p.num_heads_q + h] = lse;
}

template <typename Element, int kHeadDimV>
__global__ void __launch_bounds__(MlaCombineShape<kHeadDimV>::kThreads, 8)
    mla_combine_kernel(const MlaDecodeParams p, int heavy_slots) {
  using Shape = MlaCombineShape<kHeadDimV>;
  const int rows = p.rows_per_group();
  const int heavy_blocks = heavy_slots * rows * Shape::kQuarters;
  if ((int)blockIdx.x < heavy_blocks) {
    mla_combine_heavy<Element, kHeadDimV>(p, heavy_slots);
    return;
  }
  const int64_t index = (int64_t)(blockIdx.x - heavy_blocks) * Shape::kRowsPerBlock + threadIdx.x / 32;
  if (index < (int64_t)p.batch * rows) mla_combine_row_warp<Element, kHeadDimV>(p, index, blockIdx.y, heavy_slots > 0);
}

}  // namespace attnx::mla

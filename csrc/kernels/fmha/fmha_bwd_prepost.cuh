// The backward's float32 workspace and the two light kernels around the main one.
//
// Workspace, per query head, over ws_rows rows: dq_accum [Hq, ws_rows, D], lse_log2 [Hq, ws_rows],
// dpsum [Hq, ws_rows]. Sequence b owns rows ws_row0(b) .. + round_up(len_b, kBwdBlockM), so every
// 64-row Q tile has its own 256-byte aligned lse/dpsum slice and padding rows belong to no other
// sequence (packed: round_up(cu[b], 64) + 2 * 64 * b never overlaps the next sequence's range).
//   preprocess:  dq_accum = 0 (the rows the main kernel adds to: a sequence's round_up_rows(len)),
//                dpsum = rowsum(dO * O) - dlse, lse_log2 = lse * log2(e) (+inf for padding rows and
//                rows without keys, so their P is 0);
//   postprocess: dq = dq_accum * scale in the input dtype (dq_accum tiles are DqTileLayout).
#pragma once

#include <cuda_runtime.h>

#include <cutlass/array.h>

#include "fmha_api.h"
#include "fmha_bwd_traits.h"
#include "fmha_params.h"
#include "varlen_block_info.cuh"

namespace attnx::fmha {

__device__ inline int64_t ws_row0(const FmhaBwdParams& p, int b, const VarlenBlockInfo& info) {
  return p.cu_seqlens_q != nullptr ? round_up_rows(info.offset_q) + 2 * kBwdBlockM * (int64_t)b
                                   : (int64_t)b * round_up_rows(p.seqlen_q);
}

struct BwdWorkspace {
  float* dq_accum;
  float* lse_log2;
  float* dpsum;
  __host__ __device__ BwdWorkspace(const FmhaBwdParams& p) {
    dq_accum = p.workspace;
    lse_log2 = dq_accum + p.ws_rows * p.num_heads_q * p.head_dim;
    dpsum = lse_log2 + p.ws_rows * p.num_heads_q;
  }
};

// A warp's share of one row of O or dO: kHeadDim / 32 consecutive elements per lane, one vector
// load (rows are 16-byte aligned: TMA-ready tensors).
template <typename Element, int kHeadDim>
using RowSlice = cutlass::AlignedArray<Element, kHeadDim / 32>;

// rowsum(o * dout) of one row from the lanes' slices (every lane gets the sum).
template <typename Element, int kHeadDim>
__device__ __forceinline__ float warp_row_dot(const RowSlice<Element, kHeadDim>& a,
                                              const RowSlice<Element, kHeadDim>& b) {
  float sum = 0.f;
  CUTLASS_PRAGMA_UNROLL
  for (int i = 0; i < kHeadDim / 32; ++i) sum += static_cast<float>(a[i]) * static_cast<float>(b[i]);
  for (int s = 16; s > 0; s >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, s);
  return sum;
}

// Column pair q of a dq_accum row (DqTileLayout: pairs swizzled by the row's low bits; rows of a
// tile start at multiples of 64, so the row index's low bits are the tile's) to dq, times scale.
template <typename Element, int kHeadDim>
__device__ __forceinline__ void store_dq_pair(Element* dq, float2 a, int q, int row, float scale) {
  cutlass::Array<Element, 2> out;
  out[0] = static_cast<Element>(a.x * scale);
  out[1] = static_cast<Element>(a.y * scale);
  *reinterpret_cast<cutlass::Array<Element, 2>*>(dq + 2 * (q ^ DqTileLayout<kHeadDim>::swizzle(row))) = out;
}

// One row at a time (the neighborhood backward's kernels, na_bwd_prepost.cuh): rowsum(o * dout) ...
template <typename Element, int kHeadDim>
__device__ __forceinline__ float row_dot(const Element* o, const Element* dout, int lane) {
  using Slice = RowSlice<Element, kHeadDim>;
  const Slice a = *reinterpret_cast<const Slice*>(o + lane * (kHeadDim / 32));
  const Slice b = *reinterpret_cast<const Slice*>(dout + lane * (kHeadDim / 32));
  return warp_row_dot<Element, kHeadDim>(a, b);
}

// ... and dq = dq_accum * scale.
template <typename Element, int kHeadDim>
__device__ __forceinline__ void store_dq_row(Element* dq, const float* acc, int row, float scale, int lane) {
  CUTLASS_PRAGMA_UNROLL
  for (int q = lane; q < DqTileLayout<kHeadDim>::kPairs; q += 32)
    store_dq_pair<Element, kHeadDim>(dq, *reinterpret_cast<const float2*>(acc + 2 * q), q, row, scale);
}

// Both kernels: a warp takes kPrepostRowsPerWarp consecutive rows and issues all of their loads
// before it uses any (one row per warp left the kernels at ~1.9-2.6 TB/s, bound by block launches
// and loads in flight: 131072 blocks of 8 rows for 1M rows); 256 threads, grid
// (B * round_up_rows(max_seqlen_q) / kPrepostRowsPerBlock, Hq), the batch folded into grid.x (a grid
// dimension of its own stops at 65535). round_up_rows is a multiple of 64, so a warp's rows are
// all inside or all outside a sequence's rounded range.
constexpr int kPrepostRowsPerWarp = 4;
constexpr int kPrepostRowsPerBlock = 8 * kPrepostRowsPerWarp;

struct BwdRowWarp {
  int h, b, r0, lane;  // rows r0 .. r0 + kPrepostRowsPerWarp - 1
  __device__ explicit BwdRowWarp(const FmhaBwdParams& p) {
    const int row_blocks = (int)(round_up_rows(p.seqlen_q) / kPrepostRowsPerBlock);
    h = blockIdx.y, b = blockIdx.x / row_blocks;
    r0 = (blockIdx.x % row_blocks) * kPrepostRowsPerBlock + (threadIdx.x / 32) * kPrepostRowsPerWarp;
    lane = threadIdx.x % 32;
  }
};

template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(256) fmha_bwd_preprocess_kernel(const FmhaBwdParams p) {
  constexpr int kRows = kPrepostRowsPerWarp, kPer = kHeadDim / 32;
  using Vec = RowSlice<Element, kHeadDim>;
  const auto [h, b, r0, lane] = BwdRowWarp(p);
  const VarlenBlockInfo info(p, b);
  if (r0 >= round_up_rows(info.seqlen_q)) return;
  const BwdWorkspace ws(p);
  const int64_t row0 = (int64_t)h * p.ws_rows + ws_row0(p, b, info) + r0;
  const bool packed = p.cu_seqlens_q != nullptr;
  const auto* o = static_cast<const Element*>(p.out) + (packed ? 0 : b * p.o_batch_stride) +
                  (info.offset_q + (int64_t)r0) * p.o_row_stride + (int64_t)h * p.o_head_stride + lane * kPer;
  const auto* dout = static_cast<const Element*>(p.dout) + (packed ? 0 : b * p.do_batch_stride) +
                     (info.offset_q + (int64_t)r0) * p.do_row_stride + (int64_t)h * p.do_head_stride + lane * kPer;
  const int64_t lse0 = (info.out_row0(p, b) + r0) * p.num_heads_q + h;
  Vec a[kRows], d[kRows];
  float lse[kRows], dlse[kRows];
  CUTLASS_PRAGMA_UNROLL
  for (int j = 0; j < kRows; ++j) {  // every load first: rows of O/dO are 16-byte aligned (TMA-ready)
    if (r0 + j < info.seqlen_q) {
      a[j] = *reinterpret_cast<const Vec*>(o + j * p.o_row_stride);
      d[j] = *reinterpret_cast<const Vec*>(dout + j * p.do_row_stride);
      lse[j] = p.lse[lse0 + (int64_t)j * p.num_heads_q];
      dlse[j] = p.dlse != nullptr ? p.dlse[lse0 + (int64_t)j * p.num_heads_q] : 0.f;
    }
  }
  // Zero the rows' dq_accum (kRows * kHeadDim contiguous floats, 16-byte aligned).
  static_assert(kRows * kHeadDim % 128 == 0, "whole float4 per lane");
  float4* acc = reinterpret_cast<float4*>(ws.dq_accum + row0 * kHeadDim);
  CUTLASS_PRAGMA_UNROLL
  for (int i = lane; i < kRows * kHeadDim / 4; i += 32) acc[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  CUTLASS_PRAGMA_UNROLL
  for (int j = 0; j < kRows; ++j) {
    float dsum = 0.f, lse2 = INFINITY;
    if (r0 + j < info.seqlen_q) {
      dsum = warp_row_dot<Element, kHeadDim>(a[j], d[j]);
      lse2 = lse[j] == -INFINITY ? INFINITY : lse[j] * 1.4426950408889634f;
      dsum -= dlse[j];
    }
    if (lane == 0) ws.lse_log2[row0 + j] = lse2, ws.dpsum[row0 + j] = dsum;
  }
}

// dq = dq_accum * scale (store_dq_pair), kPrepostRowsPerWarp rows per warp.
template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(256) fmha_bwd_postprocess_kernel(const FmhaBwdParams p) {
  using Layout = DqTileLayout<kHeadDim>;
  constexpr int kRows = kPrepostRowsPerWarp, kPairsPerLane = Layout::kPairs / 32;
  static_assert(Layout::kPairs % 32 == 0, "whole pairs per lane");
  const auto [h, b, r0, lane] = BwdRowWarp(p);
  const VarlenBlockInfo info(p, b);
  if (r0 >= info.seqlen_q) return;
  const BwdWorkspace ws(p);
  const float* acc = ws.dq_accum + ((int64_t)h * p.ws_rows + ws_row0(p, b, info) + r0) * kHeadDim;
  auto* dq = static_cast<Element*>(p.dq) + (p.cu_seqlens_q != nullptr ? 0 : b * p.dq_batch_stride) +
             (info.offset_q + (int64_t)r0) * p.dq_row_stride + (int64_t)h * p.dq_head_stride;
  float2 v[kRows][kPairsPerLane];
  CUTLASS_PRAGMA_UNROLL
  for (int j = 0; j < kRows; ++j)  // every load first (rows past the sequence's end are zeros)
    CUTLASS_PRAGMA_UNROLL
    for (int k = 0; k < kPairsPerLane; ++k)
      v[j][k] = *reinterpret_cast<const float2*>(acc + j * kHeadDim + 2 * (lane + 32 * k));
  CUTLASS_PRAGMA_UNROLL
  for (int j = 0; j < kRows; ++j) {
    if (r0 + j >= info.seqlen_q) break;
    CUTLASS_PRAGMA_UNROLL
    for (int k = 0; k < kPairsPerLane; ++k)
      store_dq_pair<Element, kHeadDim>(dq + j * p.dq_row_stride, v[j][k], lane + 32 * k, r0 + j, p.scale);
  }
}

}  // namespace attnx::fmha

// The backward's float32 workspace and the two light kernels around the main one.
//
// Workspace, per query head, over ws_rows rows: dq_accum [Hq, ws_rows, D], lse_log2 [Hq, ws_rows],
// dpsum [Hq, ws_rows]. Sequence b owns rows ws_row0(b) .. + round_up(len_b, kBwdBlockM), so every
// 64-row Q tile has its own 256-byte aligned lse/dpsum slice and padding rows belong to no other
// sequence (packed: round_up(cu[b], 64) + 2 * 64 * b never overlaps the next sequence's range).
//   before:      dq_accum = 0 (a memset);
//   preprocess:  dpsum = rowsum(dO * O) - dlse, lse_log2 = lse * log2(e) (+inf for padding rows and
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

// Both kernels: one warp per row, 8 rows per block; grid (B * round_up_rows(max_seqlen_q) / 8, Hq),
// the batch folded into grid.x (a grid dimension of its own stops at 65535).
struct BwdRowWarp {
  int h, b, r, lane;
  __device__ explicit BwdRowWarp(const FmhaBwdParams& p) {
    const int row_blocks = (int)(round_up_rows(p.seqlen_q) / 8);
    h = blockIdx.y, b = blockIdx.x / row_blocks, r = (blockIdx.x % row_blocks) * 8 + threadIdx.x / 32;
    lane = threadIdx.x % 32;
  }
};

// rowsum(o * dout) over one row, a warp's lanes each taking kHeadDim / 32 consecutive elements in
// one vector load (rows are 16-byte aligned: TMA-ready tensors).
template <typename Element, int kHeadDim>
__device__ __forceinline__ float row_dot(const Element* o, const Element* dout, int lane) {
  constexpr int kPer = kHeadDim / 32;
  using Vec = cutlass::AlignedArray<Element, kPer>;
  const Vec a = *reinterpret_cast<const Vec*>(o + lane * kPer);
  const Vec b = *reinterpret_cast<const Vec*>(dout + lane * kPer);
  float sum = 0.f;
  CUTLASS_PRAGMA_UNROLL
  for (int i = 0; i < kPer; ++i) sum += static_cast<float>(a[i]) * static_cast<float>(b[i]);
  for (int s = 16; s > 0; s >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, s);
  return sum;
}

// dq = dq_accum * scale for one row: the accumulator row's column pairs are swizzled
// (DqTileLayout; rows of a tile start at multiples of 64, so the row index's low bits are the
// tile's).
template <typename Element, int kHeadDim>
__device__ __forceinline__ void store_dq_row(Element* dq, const float* acc, int row, float scale, int lane) {
  using Layout = DqTileLayout<kHeadDim>;
  CUTLASS_PRAGMA_UNROLL
  for (int q = lane; q < Layout::kPairs; q += 32) {
    const float2 a = *reinterpret_cast<const float2*>(acc + 2 * q);
    cutlass::Array<Element, 2> out;
    out[0] = static_cast<Element>(a.x * scale);
    out[1] = static_cast<Element>(a.y * scale);
    *reinterpret_cast<cutlass::Array<Element, 2>*>(dq + 2 * (q ^ Layout::swizzle(row))) = out;
  }
}

template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(256) fmha_bwd_preprocess_kernel(const FmhaBwdParams p) {
  const auto [h, b, r, lane] = BwdRowWarp(p);
  const VarlenBlockInfo info(p, b);
  if (r >= round_up_rows(info.seqlen_q)) return;
  const BwdWorkspace ws(p);
  const int64_t row = (int64_t)h * p.ws_rows + ws_row0(p, b, info) + r;
  float dsum = 0.f, lse2 = INFINITY;
  if (r < info.seqlen_q) {
    const bool packed = p.cu_seqlens_q != nullptr;
    const int64_t qrow = info.offset_q + r;
    const auto* o = static_cast<const Element*>(p.out) + (packed ? 0 : b * p.o_batch_stride) +
                    qrow * p.o_row_stride + (int64_t)h * p.o_head_stride;
    const auto* dout = static_cast<const Element*>(p.dout) + (packed ? 0 : b * p.do_batch_stride) +
                       qrow * p.do_row_stride + (int64_t)h * p.do_head_stride;
    dsum = row_dot<Element, kHeadDim>(o, dout, lane);
    const int64_t lse_idx = (info.out_row0(p, b) + r) * p.num_heads_q + h;
    const float lse = p.lse[lse_idx];
    lse2 = lse == -INFINITY ? INFINITY : lse * 1.4426950408889634f;
    if (p.dlse != nullptr) dsum -= p.dlse[lse_idx];
  }
  if (lane == 0) ws.lse_log2[row] = lse2, ws.dpsum[row] = dsum;
}

template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(256) fmha_bwd_postprocess_kernel(const FmhaBwdParams p) {
  const auto [h, b, r, lane] = BwdRowWarp(p);
  const VarlenBlockInfo info(p, b);
  if (r >= info.seqlen_q) return;
  const BwdWorkspace ws(p);
  const float* acc = ws.dq_accum + ((int64_t)h * p.ws_rows + ws_row0(p, b, info) + r) * kHeadDim;
  auto* dq = static_cast<Element*>(p.dq) + (p.cu_seqlens_q != nullptr ? 0 : b * p.dq_batch_stride) +
             (info.offset_q + (int64_t)r) * p.dq_row_stride + (int64_t)h * p.dq_head_stride;
  store_dq_row<Element, kHeadDim>(dq, acc, r, p.scale, lane);
}

}  // namespace attnx::fmha

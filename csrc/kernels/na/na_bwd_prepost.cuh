// The neighborhood-attention backward's float32 workspace and the two light kernels around the
// main one.
//
// Workspace rows are tile-major, so each walked Q tile owns 64 consecutive rows: row
// ((head * B + batch) * num_q_tiles + tile) * 64 + r holds the query at the tile's origin +
// offset(r) (tiles row-major over the Q tile grid, axis 2 fastest). Arrays: dq_accum [rows, D],
// lse_log2 [rows], dpsum [rows]. Rows of tiles overhanging an axis hold no query.
//   preprocess:  dq_accum = 0 (every row: the grid covers all tiles), dpsum = rowsum(dO * O) - dlse,
//                lse_log2 = lse * log2(e) (+inf for rows without a query, so their P is 0);
//   postprocess: dq = dq_accum * scale in the input dtype (dq_accum tiles are DqTileLayout).
#pragma once

#include <cuda_runtime.h>

#include "../fmha/fmha_bwd_prepost.cuh"
#include "../fmha/fmha_params.h"
#include "na_bwd_plan.h"
#include "na_window.cuh"

namespace attnx::na {

struct NaBwdWorkspace {
  float* dq_accum;
  float* lse_log2;
  float* dpsum;
  int64_t rows;
  __host__ __device__ NaBwdWorkspace(const NaBwdParams& p, int64_t num_q_tiles) {
    rows = (int64_t)p.num_heads_q * p.batch * num_q_tiles * kNaBwdQTokens;
    dq_accum = p.workspace;
    lse_log2 = dq_accum + rows * p.head_dim;
    dpsum = lse_log2 + rows;
  }
};

// One Q tile of the workspace: its batch and first token per axis, from blockIdx.x = batch x Q
// tile (tiles row-major, axis 2 fastest).
struct NaWsTile {
  int batch;
  int origin[kAxes];
  __device__ NaWsTile(const NaBwdParams& p, const NaTileShape& qs, int flat) {
    for (int a = kAxes - 1; a >= 0; --a) {
      const int tiles = (p.extent[a] + qs.dim[a] - 1) / qs.dim[a];
      origin[a] = flat % tiles * qs.dim[a];
      flat /= tiles;
    }
    batch = flat;
  }
  // Row r's query: coordinates, and whether it exists (tiles may overhang an axis end).
  __device__ bool query(const NaBwdParams& p, const NaTileShape& qs, int r, int (&coord)[kAxes]) const {
    bool valid = true;
    for (int a = 0; a < kAxes; ++a) {
      coord[a] = origin[a] + qs.offset(r, a);
      valid = valid && coord[a] < p.extent[a];
    }
    return valid;
  }
  __device__ int64_t offset(const int (&coord)[kAxes], int64_t batch_stride, const int64_t (&axis_stride)[kAxes],
                            int64_t head_stride, int head) const {
    int64_t off = batch * batch_stride + head * head_stride;
    for (int a = 0; a < kAxes; ++a) off += coord[a] * axis_stride[a];
    return off;
  }
  // Index of a query's lse in [B, X0, X1, X2, Hq].
  __device__ int64_t lse_index(const NaBwdParams& p, const int (&coord)[kAxes], int head) const {
    const int64_t token = (((int64_t)batch * p.extent[0] + coord[0]) * p.extent[1] + coord[1]) * p.extent[2] + coord[2];
    return token * p.num_heads_q + head;
  }
};

// Both kernels: one block per (Q tile, query head), grid (B x Q tiles, Hq); each of the 8 warps
// takes 8 of the tile's 64 rows, a row per step. p carries the chosen tiles.
template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(256) na_bwd_preprocess_kernel(const NaBwdParams p, int num_q_tiles) {
  const NaTileShape qs(p.q_tile);
  const NaWsTile tile(p, qs, blockIdx.x);
  const int h = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const NaBwdWorkspace ws(p, num_q_tiles);
  const int64_t row0 = ((int64_t)h * p.batch * num_q_tiles + blockIdx.x) * kNaBwdQTokens;
  static_assert(kNaBwdQTokens * kHeadDim % (4 * 256) == 0, "whole float4 per thread");
  float4* acc = reinterpret_cast<float4*>(ws.dq_accum + row0 * kHeadDim);  // the tile's rows: zeros
  CUTLASS_PRAGMA_UNROLL
  for (int i = threadIdx.x; i < kNaBwdQTokens * kHeadDim / 4; i += 256) acc[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int r = warp * 8; r < warp * 8 + 8; ++r) {
    int coord[kAxes];
    float dsum = 0.f, lse2 = INFINITY;
    if (tile.query(p, qs, r, coord)) {
      const auto* o = static_cast<const Element*>(p.out) +
                      tile.offset(coord, p.o_batch_stride, p.o_axis_stride, p.o_head_stride, h);
      const auto* dout = static_cast<const Element*>(p.dout) +
                         tile.offset(coord, p.do_batch_stride, p.do_axis_stride, p.do_head_stride, h);
      dsum = fmha::row_dot<Element, kHeadDim>(o, dout, lane);
      const int64_t lse_idx = tile.lse_index(p, coord, h);
      const float lse = p.lse[lse_idx];
      lse2 = lse == -INFINITY ? INFINITY : lse * 1.4426950408889634f;
      if (p.dlse != nullptr) dsum -= p.dlse[lse_idx];
    }
    if (lane == 0) ws.lse_log2[row0 + r] = lse2, ws.dpsum[row0 + r] = dsum;
  }
}

template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(256) na_bwd_postprocess_kernel(const NaBwdParams p, int num_q_tiles) {
  const NaTileShape qs(p.q_tile);
  const NaWsTile tile(p, qs, blockIdx.x);
  const int h = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const NaBwdWorkspace ws(p, num_q_tiles);
  const int64_t row0 = ((int64_t)h * p.batch * num_q_tiles + blockIdx.x) * kNaBwdQTokens;
  for (int r = warp * 8; r < warp * 8 + 8; ++r) {
    int coord[kAxes];
    if (!tile.query(p, qs, r, coord)) continue;
    auto* dq = static_cast<Element*>(p.dq) + tile.offset(coord, p.dq_batch_stride, p.dq_axis_stride, p.dq_head_stride, h);
    fmha::store_dq_row<Element, kHeadDim>(dq, ws.dq_accum + (row0 + r) * kHeadDim, r, p.scale, lane);
  }
}

}  // namespace attnx::na

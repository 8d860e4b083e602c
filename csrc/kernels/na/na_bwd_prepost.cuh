// The neighborhood-attention backward's float32 workspace and the two light kernels around the
// main one.
//
// Workspace rows are tile-major, so each walked Q tile owns 64 consecutive rows: row
// ((head * B + batch) * num_q_tiles + tile) * 64 + r holds the query at the tile's origin +
// offset(r) (tiles row-major over the Q tile grid, axis 2 fastest). Arrays: dq_accum [rows, D],
// lse_log2 [rows], dpsum [rows]. Rows of tiles overhanging an axis hold no query.
//   preprocess:  dpsum = rowsum(dO * O) - dlse, lse_log2 = lse * log2(e) (+inf for rows without a
//                query, so their P is 0), dq_accum = 0;
//   postprocess: dq = dq_accum * scale in the input dtype.
#pragma once

#include <cuda_runtime.h>

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

// The query of one workspace row (within a head): batch, coordinates and whether it exists.
struct NaWsQuery {
  int batch;
  int coord[kAxes];
  bool valid;
  __device__ NaWsQuery(const NaBwdParams& p, const NaTileShape& qs, const int (&tiles)[kAxes], int64_t row) {
    const int r = (int)(row % kNaBwdQTokens);
    int64_t t = row / kNaBwdQTokens;
    int tc[kAxes];
    for (int a = kAxes - 1; a >= 0; --a) tc[a] = (int)(t % tiles[a]), t /= tiles[a];
    batch = (int)t;
    valid = true;
    for (int a = 0; a < kAxes; ++a) {
      coord[a] = tc[a] * qs.dim[a] + qs.offset(r, a);
      valid = valid && coord[a] < p.extent[a];
    }
  }
  __device__ int64_t offset(int64_t batch_stride, const int64_t (&axis_stride)[kAxes], int64_t head_stride,
                            int head) const {
    int64_t off = batch * batch_stride + head * head_stride;
    for (int a = 0; a < kAxes; ++a) off += coord[a] * axis_stride[a];
    return off;
  }
  // Index of this query's lse in [B, X0, X1, X2, Hq].
  __device__ int64_t lse_index(const NaBwdParams& p, int head) const {
    const int64_t token = (((int64_t)batch * p.extent[0] + coord[0]) * p.extent[1] + coord[1]) * p.extent[2] + coord[2];
    return token * p.num_heads_q + head;
  }
};

// Both kernels: one warp per row, 8 rows per block; grid (rows per head / 8, Hq). p carries the
// chosen tiles.
template <typename Element>
__global__ void __launch_bounds__(256) na_bwd_preprocess_kernel(const NaBwdParams p, int num_q_tiles) {
  const NaTileShape qs(p.q_tile);
  const int tiles[kAxes] = {(p.extent[0] + qs.dim[0] - 1) / qs.dim[0], (p.extent[1] + qs.dim[1] - 1) / qs.dim[1],
                            (p.extent[2] + qs.dim[2] - 1) / qs.dim[2]};
  const int h = blockIdx.y, lane = threadIdx.x % 32;
  const int64_t r = (int64_t)blockIdx.x * 8 + threadIdx.x / 32;
  const NaBwdWorkspace ws(p, num_q_tiles);
  const int64_t row = h * (ws.rows / p.num_heads_q) + r;
  for (int d = lane; d < p.head_dim; d += 32) ws.dq_accum[row * p.head_dim + d] = 0.f;
  const NaWsQuery q(p, qs, tiles, r);
  float dsum = 0.f, lse2 = INFINITY;
  if (q.valid) {
    const auto* o = static_cast<const Element*>(p.out) + q.offset(p.o_batch_stride, p.o_axis_stride, p.o_head_stride, h);
    const auto* dout =
        static_cast<const Element*>(p.dout) + q.offset(p.do_batch_stride, p.do_axis_stride, p.do_head_stride, h);
    for (int d = lane; d < p.head_dim; d += 32) dsum += static_cast<float>(o[d]) * static_cast<float>(dout[d]);
    for (int s = 16; s > 0; s >>= 1) dsum += __shfl_xor_sync(0xffffffff, dsum, s);
    const int64_t lse_idx = q.lse_index(p, h);
    const float lse = p.lse[lse_idx];
    lse2 = lse == -INFINITY ? INFINITY : lse * 1.4426950408889634f;
    if (p.dlse != nullptr) dsum -= p.dlse[lse_idx];
  }
  if (lane == 0) ws.lse_log2[row] = lse2, ws.dpsum[row] = dsum;
}

template <typename Element>
__global__ void __launch_bounds__(256) na_bwd_postprocess_kernel(const NaBwdParams p, int num_q_tiles) {
  const NaTileShape qs(p.q_tile);
  const int tiles[kAxes] = {(p.extent[0] + qs.dim[0] - 1) / qs.dim[0], (p.extent[1] + qs.dim[1] - 1) / qs.dim[1],
                            (p.extent[2] + qs.dim[2] - 1) / qs.dim[2]};
  const int h = blockIdx.y, lane = threadIdx.x % 32;
  const int64_t r = (int64_t)blockIdx.x * 8 + threadIdx.x / 32;
  const NaWsQuery q(p, qs, tiles, r);
  if (!q.valid) return;
  const NaBwdWorkspace ws(p, num_q_tiles);
  const float* acc = ws.dq_accum + (h * (ws.rows / p.num_heads_q) + r) * p.head_dim;
  auto* dq = static_cast<Element*>(p.dq) + q.offset(p.dq_batch_stride, p.dq_axis_stride, p.dq_head_stride, h);
  for (int d = lane; d < p.head_dim; d += 32) dq[d] = static_cast<Element>(acc[d] * p.scale);
}

}  // namespace attnx::na

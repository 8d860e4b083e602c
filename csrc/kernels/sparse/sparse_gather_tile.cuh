// Which tile a CTA of the tiled sparse kernels owns (the pre-pass, the forward and the backward
// all launch grid (query tile m, query head h, batch b)), and where that tile's part of the
// workspace lies: tile index (b * Hq + h) * ceil(Lq / 128) + m.
#pragma once

#include "sparse_params.h"

namespace attnx::sparse {

struct GatherTile {
  int m, h, b;
  int rows;           // queries in the tile (128 but in the last)
  int64_t index;      // the tile's number in the workspace
  const int* order;   // the tile's slice of p.query_order
  int* union_count;   // the tile's union size
  int* keys;          // its union, ascending
  uint32_t* masks;    // [chunk][128 rows][4 words]

  __device__ GatherTile(const SparseFwdParams& p, const SparseGatherWorkspace& ws)
      : m(blockIdx.x), h(blockIdx.y), b(blockIdx.z) {
    const int64_t bh = int64_t(b) * p.num_heads_q + h;
    rows = min(kGatherTileM, p.seqlen_q - m * kGatherTileM);
    index = bh * SparseGatherWorkspace::num_m_tiles(p) + m;
    order = p.query_order + bh * p.seqlen_q + int64_t(m) * kGatherTileM;
    const int64_t max_chunks = SparseGatherWorkspace::max_chunks(p);
    union_count = ws.union_count + index;
    keys = ws.union_keys + index * max_chunks * kGatherTileN;
    masks = ws.masks + index * max_chunks * kGatherTileM * 4;
  }
};

// Query order[r] of the tile's row r, clamped into [0, Lq) (a malformed order stays in bounds).
__device__ __forceinline__ int tile_query(const int* order, int r, int seqlen_q) {
  return min(max(order[r], 0), seqlen_q - 1);
}

}  // namespace attnx::sparse

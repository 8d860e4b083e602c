// Where the tiles of fused neighborhood attention live: which multi-dimensional Q tile a CTA
// owns, the KV tiles it visits (a box of tiles, one range per axis) and where its output rows go.
#pragma once

#include "na_params.h"
#include "na_window.cuh"

namespace attnx::na {

// The visited KV tiles: the product of one tile range per axis, walked row-major. The producer
// and the consumers walk the same object, so a tile's pipeline stage is its position in the walk.
struct NaTileWalk {
  int lo[kAxes], len[kAxes];
  __device__ int count() const { return len[0] * len[1] * len[2]; }
  __device__ NaKvTile tile(int i) const {
    NaKvTile t;
    t.t[2] = lo[2] + i % len[2];
    i /= len[2];
    t.t[1] = lo[1] + i % len[1];
    t.t[0] = lo[0] + i / len[1];
    return t;
  }
};

// The CTA's Q tile (in the backward: its KV tile): batch and the tile's first token per axis,
// from a flat block index with the tiles of one (batch, head) consecutive and the innermost axis
// fastest (neighbouring CTAs share most of the tiles they walk in L2).
struct NaQTile {
  int batch;
  int origin[kAxes];

  NaQTile() = default;
  __device__ NaQTile(const NaFwdParams& p, const NaTileShape& qs, int block) {
    int tiles[kAxes];
    for (int a = 0; a < kAxes; ++a) tiles[a] = (p.extent[a] + qs.dim[a] - 1) / qs.dim[a];
    origin[2] = block % tiles[2] * qs.dim[2];
    block /= tiles[2];
    origin[1] = block % tiles[1] * qs.dim[1];
    block /= tiles[1];
    origin[0] = block % tiles[0] * qs.dim[0];
    batch = block / tiles[0];
  }

  __device__ NaTileWalk walk(const NaAxis (&axis)[kAxes], const NaTileShape& qs, const NaTileShape& ks) const {
    NaTileWalk w;
    for (int a = 0; a < kAxes; ++a) {
      int hi;
      axis[a].kv_tile_range(origin[a], qs.dim[a], ks.dim[a], w.lo[a], hi);
      w.len[a] = hi - w.lo[a] + 1;
    }
    return w;
  }
};

// The backward's walk of one KV tile: the Q tiles (extents qs) holding a query that sees one of
// the tile's keys. Per axis the queries seeing keys [j0, j1] are [first(j0), last(j1)] of the
// inverse axis (both never decrease); an axis where no query sees them gives an empty box.
__device__ inline NaTileWalk na_q_tile_box(const NaAxis (&axis)[kAxes], const int (&kv_origin)[kAxes],
                                           const NaTileShape& ks, const NaTileShape& qs) {
  NaTileWalk w;
  for (int a = 0; a < kAxes; ++a) {
    const NaInverseAxis inv{axis[a]};
    const int j1 = min(kv_origin[a] + ks.dim[a] - 1, axis[a].n - 1);
    const int lo = inv.first(kv_origin[a]), hi = inv.last(j1);
    w.lo[a] = lo / qs.dim[a];
    w.len[a] = lo <= hi ? hi / qs.dim[a] - w.lo[a] + 1 : 0;
  }
  return w;
}

// Output rows of a Q tile: row r is the token at origin + offset(r) on each axis; rows past an
// axis end (a tile overhanging the axis) are not stored.
template <typename Element>
struct NaRowMap {
  Element* out;  // this (batch, head)
  float* lse;    // this (batch, head)
  int64_t out_stride[kAxes], lse_stride[kAxes];
  int origin[kAxes], extent[kAxes];
  NaTileShape shape;

  __device__ NaRowMap(const NaFwdParams& p, const NaQTile& qt, const NaTileShape& qs, int head) : shape(qs) {
    out = static_cast<Element*>(p.out) + qt.batch * p.o_batch_stride + head * p.o_head_stride;
    int64_t tokens = 1;
    for (int a = kAxes - 1; a >= 0; --a) {
      out_stride[a] = p.o_axis_stride[a];
      lse_stride[a] = tokens * p.num_heads_q;
      tokens *= p.extent[a];
      origin[a] = qt.origin[a], extent[a] = p.extent[a];
    }
    lse = p.lse + (qt.batch * tokens) * p.num_heads_q + head;
  }
  __device__ bool valid(int r) const {
    bool ok = true;
    for (int a = 0; a < kAxes; ++a) ok = ok && origin[a] + shape.offset(r, a) < extent[a];
    return ok;
  }
  __device__ Element* out_row(int r) const {
    int64_t off = 0;
    for (int a = 0; a < kAxes; ++a) off += (origin[a] + shape.offset(r, a)) * out_stride[a];
    return out + off;
  }
  __device__ float* lse_row(int r) const {
    int64_t off = 0;
    for (int a = 0; a < kAxes; ++a) off += (origin[a] + shape.offset(r, a)) * lse_stride[a];
    return lse + off;
  }
};

}  // namespace attnx::na

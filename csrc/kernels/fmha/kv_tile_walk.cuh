// The KV tiles one Q tile visits, in visiting order. The producer and the consumers of a CTA walk
// the same object, so a tile's pipeline stage is implied by its position in the walk.
//
//   KvTileRange: a contiguous range [n_min, n_max) walked backwards (dense, causal, windows: the
//                tiles needing an element mask come first).
//   KvTileList:  the tiles listed for this Q tile (block-sparse attention, GNA plans).
#pragma once

namespace attnx::fmha {

struct KvTileRange {
  int n_min, n_max;
  __device__ int count() const { return n_max > n_min ? n_max - n_min : 0; }
  __device__ int tile(int i) const { return n_max - 1 - i; }
};

// Entries are clamped to the existing tiles and the count to the list's capacity, so malformed
// lists give wrong values but never an access out of bounds (the Python API checks the values).
struct KvTileList {
  const int* tiles;  // contiguous
  int num_listed;
  int num_tiles;     // KV tiles of the sequence
  __device__ int count() const { return num_listed; }
  __device__ int tile(int i) const { return min(max(tiles[i], 0), num_tiles - 1); }
};

}  // namespace attnx::fmha

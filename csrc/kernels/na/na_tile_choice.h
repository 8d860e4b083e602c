// Host-side choice of the multi-dimensional tile shape: among the power-of-two shapes of the
// kernel's tile size, the one whose tiles visit the fewest (Q tile, KV tile) pairs.
//
// The visited pairs factor over the axes (a Q tile visits a box of KV tiles, one range per axis),
// so a shape's cost is the product over axes of the KV tiles visited per Q tile position, summed
// along that axis: a few thousand window evaluations per candidate.
#pragma once

#include <cstdint>

#include "na_params.h"
#include "na_window.cuh"

namespace attnx::na {

inline double na_visited_pairs(const NaFwdParams& p, const int (&tile)[kAxes]) {
  double pairs = 1.0;
  for (int a = 0; a < kAxes; ++a) {
    const NaAxis axis{p.extent[a], p.kernel_size[a], p.stride[a], p.causal[a]};
    int64_t sum = 0;
    for (int q0 = 0; q0 < p.extent[a]; q0 += tile[a]) {
      int lo, hi;
      axis.kv_tile_range(q0, tile[a], tile[a], lo, hi);
      sum += hi - lo + 1;
    }
    pairs *= (double)sum;
  }
  return pairs;
}

inline int pow2_ceil(int x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

// Fills tile with the best shape of 2^log2_tokens tokens (each pair costs the same whether or
// not its tiles overhang an axis, so the pair count alone decides). A batch boundary lies inside
// the TMA view's outer axis (batch x axis 0), so with several batches axis 0's tile must divide
// it (a tile of 1 always does). Ties go to the shape with the larger inner extents. Shapes
// overhanging an axis by a factor of two or more only add padding and are skipped (which also
// keeps the scoring cheap on long axes), unless no other shape is left.
inline void na_choose_tile(const NaFwdParams& p, int log2_tokens, int (&tile)[kAxes]) {
  double best = -1.0;
  auto scan = [&](bool prune) {
    for (int e0 = 0; e0 <= log2_tokens; ++e0)
      for (int e1 = 0; e0 + e1 <= log2_tokens; ++e1) {
        const int cand[kAxes] = {1 << e0, 1 << e1, 1 << (log2_tokens - e0 - e1)};
        if (p.batch > 1 && p.extent[0] % cand[0] != 0) continue;
        bool overhangs = false;
        for (int a = 0; a < kAxes; ++a) overhangs = overhangs || cand[a] > pow2_ceil(p.extent[a]);
        if (prune && overhangs) continue;
        const double cost = na_visited_pairs(p, cand);
        if (best < 0.0 || cost < best || (cost == best && cand[2] > tile[2])) {
          best = cost;
          for (int a = 0; a < kAxes; ++a) tile[a] = cand[a];
        }
      }
  };
  scan(true);
  if (best < 0.0) scan(false);  // no shape fits inside the axes: short axes make every shape cheap to score
}

}  // namespace attnx::na

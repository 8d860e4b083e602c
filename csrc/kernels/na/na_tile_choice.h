// Host-side choice of the multi-dimensional tile shape: among the power-of-two shapes of the
// kernel's tile size, the one whose tiles visit the fewest (Q tile, KV tile) pairs.
//
// The visited pairs factor over the axes (a Q tile visits a box of KV tiles, one range per axis),
// so a shape's cost is the product over axes of the KV tiles visited per Q tile position, summed
// along that axis: a few thousand window evaluations per candidate.
#pragma once

#include <cmath>
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

// The forward's tile size: log2 of the token count, log2_short when the small tiles pay, else
// log2_long; the chosen shape is returned in tile. Small tiles (two CTAs resident per SM) visit
// fewer key slots, since a smaller Q tile's windows leave less of their union unused, and hide one
// CTA's start-up and epilogue under the other's GEMMs, which matters on short walks; but per key
// slot they run the tensor cores at a lower rate. Fitted to 15 problems on an H200 (head dims 64
// and 128, docs/perf-notes.md): time(small) / time(long) ~ r * (1.23 - 0.64 / w), with r the key
// slots visited by small over long tiles and w the long tiles' mean walk (KV tiles per Q tile).
// Small tiles are taken where that predicts a gain of more than 3% (run-to-run spread).
inline int na_fwd_tile_size(const NaFwdParams& p, int log2_long, int log2_short, int (&tile)[kAxes]) {
  int small[kAxes];
  na_choose_tile(p, log2_long, tile);
  na_choose_tile(p, log2_short, small);
  const double pairs_long = na_visited_pairs(p, tile), pairs_short = na_visited_pairs(p, small);
  double q_tiles = 1.0;
  for (int a = 0; a < kAxes; ++a) q_tiles *= (double)((p.extent[a] + tile[a] - 1) / tile[a]);
  const double r = pairs_short / pairs_long * std::ldexp(1.0, 2 * (log2_short - log2_long));
  const double walk = pairs_long / q_tiles;
  if (r * (1.23 - 0.64 / walk) >= 0.97) return log2_long;
  for (int a = 0; a < kAxes; ++a) tile[a] = small[a];
  return log2_short;
}

// Backward: each CTA owns a KV tile (2^log2_kv tokens) and walks the Q tiles (2^log2_q tokens)
// with a query seeing one of its keys. Visited pairs factor over the axes as in the forward; per
// axis, the sum over KV tile positions of the Q tiles visited (NaInverseAxis).
inline int64_t na_bwd_axis_pairs(const NaAxis& axis, int kv_dim, int q_dim) {
  const NaInverseAxis inv{axis};
  int64_t sum = 0;
  for (int j0 = 0; j0 < axis.n; j0 += kv_dim) {
    const int j1 = j0 + kv_dim - 1 < axis.n - 1 ? j0 + kv_dim - 1 : axis.n - 1;
    const int lo = inv.first(j0), hi = inv.last(j1);
    if (lo <= hi) sum += hi / q_dim - lo / q_dim + 1;
  }
  return sum;
}

// Same rules as na_choose_tile (axis 0 divides with several batches; overhanging shapes last).
inline void na_choose_bwd_tiles(const NaFwdParams& p, int log2_kv, int log2_q, int (&kv_tile)[kAxes],
                                int (&q_tile)[kAxes]) {
  double best = -1.0;
  int64_t memo[kAxes][16][16];  // pairs per axis by (log2 KV extent, log2 Q extent)
  for (auto& by_axis : memo)
    for (auto& row : by_axis)
      for (int64_t& m : row) m = -1;
  auto pairs = [&](int a, int lk, int lq) {
    int64_t& m = memo[a][lk][lq];
    if (m < 0) m = na_bwd_axis_pairs(NaAxis{p.extent[a], p.kernel_size[a], p.stride[a], p.causal[a]}, 1 << lk, 1 << lq);
    return m;
  };
  auto fits = [&](const int (&t)[kAxes], bool prune) {
    if (p.batch > 1 && p.extent[0] % t[0] != 0) return false;
    for (int a = 0; a < kAxes; ++a)
      if (prune && t[a] > pow2_ceil(p.extent[a])) return false;
    return true;
  };
  auto scan = [&](bool prune) {
    for (int k0 = 0; k0 <= log2_kv; ++k0)
      for (int k1 = 0; k0 + k1 <= log2_kv; ++k1) {
        const int kv[kAxes] = {1 << k0, 1 << k1, 1 << (log2_kv - k0 - k1)};
        if (!fits(kv, prune)) continue;
        for (int q0 = 0; q0 <= log2_q; ++q0)
          for (int q1 = 0; q0 + q1 <= log2_q; ++q1) {
            const int q[kAxes] = {1 << q0, 1 << q1, 1 << (log2_q - q0 - q1)};
            if (!fits(q, prune)) continue;
            const int lk[kAxes] = {k0, k1, log2_kv - k0 - k1}, lq[kAxes] = {q0, q1, log2_q - q0 - q1};
            double cost = 1.0;
            for (int a = 0; a < kAxes; ++a) cost *= (double)pairs(a, lk[a], lq[a]);
            if (best < 0.0 || cost < best || (cost == best && kv[2] + q[2] > kv_tile[2] + q_tile[2])) {
              best = cost;
              for (int a = 0; a < kAxes; ++a) kv_tile[a] = kv[a], q_tile[a] = q[a];
            }
          }
      }
  };
  scan(true);
  if (best < 0.0) scan(false);
}

}  // namespace attnx::na

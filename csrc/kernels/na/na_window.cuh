// NATTEN's neighbourhood along one axis, and the element mask of a (Q tile, KV tile) pair built
// from it. Dilation 1: the keys a query sees on an axis are one contiguous run [first, last].
//
// Per axis of length n, kernel k, stride s (reference: attnx.reference.neighborhood):
//   non-causal: leader L = min(floor(i/s)*s + floor(s/2), n-1); keys clamp(L - floor(k/2), 0, n-k) ... + k-1
//   causal:     leader L = min(floor(i/s)*s + s-1, n-1);        keys max(L-k+1, 0) ... i
// first(i) and last(i) never decrease with i and consecutive runs overlap or touch (s <= k), so
// the keys seen by a run of queries [q0, q1] are exactly [first(q0), last(q1)].
#pragma once

#include <cute/tensor.hpp>

#include "na_params.h"

namespace attnx::na {

struct NaAxis {
  int n, k, s;
  bool causal;

  CUTE_HOST_DEVICE int first(int i) const {
    const int base = s == 1 ? i : i / s * s;
    int lead = base + (causal ? s - 1 : s / 2);
    lead = lead < n - 1 ? lead : n - 1;
    if (causal) return lead - k + 1 > 0 ? lead - k + 1 : 0;
    const int start = lead - k / 2 > 0 ? lead - k / 2 : 0;
    return start < n - k ? start : n - k;
  }
  CUTE_HOST_DEVICE int last(int i) const { return causal ? i : first(i) + k - 1; }
  CUTE_HOST_DEVICE int extent() const { return n; }
  // The mask-table window of tile row i: rows past the axis end take the last query's window
  // (finite scores that are never stored).
  CUTE_HOST_DEVICE void row_window(int i, int& lo, int& hi) const {
    i = i < n - 1 ? i : n - 1;
    lo = first(i), hi = last(i);
  }

  // KV tiles (of tk tokens) holding a key seen by the queries of the Q tile starting at q0.
  CUTE_HOST_DEVICE void kv_tile_range(int q0, int tq, int tk, int& lo, int& hi) const {
    const int q1 = q0 + tq - 1 < n - 1 ? q0 + tq - 1 : n - 1;
    lo = first(q0) / tk;
    hi = last(q1) / tk;
  }
};

// The inverse view of an axis, for the backward (rows = keys, columns = queries): the queries
// that see key j are [first(j), last(j)], empty when first > last. Since first(i) and last(i) of
// NaAxis never decrease, {i : first(i) <= j <= last(i)} is one interval: closed forms for stride
// 1, two binary searches for strided windows (evaluated once per key and CTA, not per score).
// Stride 1, non-causal: first(i) = clamp(i - k/2, 0, n - k), so last(i) >= j iff
// i >= j - k + 1 + k/2 (or j < k), and first(i) <= j iff i <= j + k/2 (or j >= n - k).
// Stride 1, causal: [max(i - k + 1, 0), i] gives [j, j + k - 1].
struct NaInverseAxis {
  NaAxis ax;
  CUTE_HOST_DEVICE int first(int j) const {  // min {i : last(i) >= j}; n if none
    if (ax.s == 1) {
      if (ax.causal) return j;
      return j - ax.k + 1 <= 0 ? 0 : j - ax.k + 1 + ax.k / 2;
    }
    int lo = 0, hi = ax.n;
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (ax.last(mid) >= j) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }
  CUTE_HOST_DEVICE int last(int j) const {  // max {i : first(i) <= j}; -1 if none
    if (ax.s == 1) {
      const int i = ax.causal ? j + ax.k - 1 : (j >= ax.n - ax.k ? ax.n - 1 : j + ax.k / 2);
      return i < ax.n - 1 ? i : ax.n - 1;
    }
    int lo = -1, hi = ax.n - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (ax.first(mid) <= j) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
  CUTE_HOST_DEVICE int extent() const { return ax.n; }
  // Keys past the axis end (an overhanging KV tile) are seen by no query.
  CUTE_HOST_DEVICE void row_window(int j, int& lo, int& hi) const {
    if (j >= ax.n) {
      lo = ax.n, hi = -1;
    } else {
      lo = first(j), hi = last(j);
    }
  }
};

// A multi-dimensional tile of 2^(sum of log2) tokens, row-major over the three axes (axis 2
// innermost): token r of the tile sits at offset ((r >> shift[a]) & (dim[a] - 1)) on axis a.
struct NaTileShape {
  int dim[kAxes];
  int shift[kAxes];
  CUTE_HOST_DEVICE explicit NaTileShape(const int (&d)[kAxes]) {
    int sh = 0;
    for (int a = kAxes - 1; a >= 0; --a) {
      dim[a] = d[a];
      shift[a] = sh;
      for (int x = d[a]; x > 1; x >>= 1) ++sh;
    }
  }
  CUTE_HOST_DEVICE int offset(int r, int a) const { return (r >> shift[a]) & (dim[a] - 1); }
};

// One KV tile of the walk: its tile coordinates per axis.
struct NaKvTile {
  int t[kAxes];
};

// What one row of the score tile sees, per axis: [first, last] (absolute coordinates): keys of a
// query in the forward, queries of a key in the backward. 32 bytes: two 16-byte shared loads.
struct NaRowWindow {
  int first[kAxes], pad0;
  int last[kAxes], pad1;
};

// Shared-memory tables of the element mask, filled once per CTA by the consumer warpgroups. The
// CTA's own tile gives the rows (Q tile in the forward, KV tile in the backward); the walked
// tiles give the columns.
//   windows[r]: what row r sees (NaRowWindow).
//   below[q][base_a + v]: the columns (bit i = the thread's i-th accumulator column) whose offset
//     on axis a inside the column tile is below v, for v in [0, dim_a]; base_a = sum over axes b < a
//     of (dim_b + 1). Threads of one lane % 4 (q) hold the same columns, so four tables serve all.
// The columns a row sees on axis a are the offsets [lo, hi): their column set is
// below[hi] & ~below[lo], and a row's mask is the AND over the axes: a few loads per row and
// one bit test per score, whatever the tile shape.
template <int kRowTile, int kColTile>
struct NaMaskSmem {
  // sum over axes of (dim_a + 1) is largest for one axis of kColTile and two of 1: kColTile + 2 + kAxes.
  static constexpr int kEntries = kColTile + 2 + kAxes;
  NaRowWindow windows[kRowTile];
  uint32_t below[4][kEntries];
};

// Axis: NaAxis (forward) or NaInverseAxis (backward).
template <int kRows, int kRowTile, int kColTile>
struct NaMask {
  // Column tile t needs no element mask iff on every axis full_lo <= t * dim and t * dim + dim - 1 <= full_hi.
  int full_lo[kAxes], full_hi[kAxes];
  int col_dim[kAxes];
  const NaMaskSmem<kRowTile, kColTile>* sm;
  const uint32_t* below;  // this thread's table

  template <class Axis>
  __device__ NaMask(const Axis (&axis)[kAxes], const NaTileShape& row_shape, const NaTileShape& col_shape,
                    const int (&row_origin)[kAxes], const NaMaskSmem<kRowTile, kColTile>* smem, int mma_tid)
      : sm(smem), below(smem->below[mma_tid % 4]) {
    CUTLASS_PRAGMA_UNROLL
    for (int a = 0; a < kAxes; ++a) {
      const int r1 = min(row_origin[a] + row_shape.dim[a] - 1, axis[a].extent() - 1);
      full_lo[a] = axis[a].first(r1);  // first and last never decrease
      full_hi[a] = axis[a].last(row_origin[a]);
      col_dim[a] = col_shape.dim[a];
    }
  }

  __device__ bool tile_needs_mask(const NaKvTile& kt) const {
    bool full = true;
    CUTLASS_PRAGMA_UNROLL
    for (int a = 0; a < kAxes; ++a) {
      const int k0 = kt.t[a] * col_dim[a];
      full = full && k0 >= full_lo[a] && k0 + col_dim[a] - 1 <= full_hi[a];
    }
    return !full;
  }
  __device__ bool tile_needs_mask(int /*m_block*/, const NaKvTile& kt) const { return tile_needs_mask(kt); }

  // s_rc: scores as (rows, cols); coord_rc: their (row, col) within the tile pair.
  template <class TensorS, class TensorC>
  __device__ void apply(TensorS& s_rc, TensorC const& coord_rc, int /*m_block*/, const NaKvTile& kt) const {
    apply(s_rc, coord_rc, kt);
  }
  template <class TensorS, class TensorC>
  __device__ void apply(TensorS& s_rc, TensorC const& coord_rc, const NaKvTile& kt) const {
    static_assert(decltype(cute::size<0>(s_rc))::value == kRows);
    static_assert(decltype(cute::size<1>(s_rc))::value <= 32, "one bit per accumulator column");
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      const NaRowWindow w = sm->windows[cute::get<0>(coord_rc(mi, 0))];
      uint32_t bits = ~0u;
      int base = 0;
      CUTLASS_PRAGMA_UNROLL
      for (int a = 0; a < kAxes; ++a) {
        const int k0 = kt.t[a] * col_dim[a];
        const int lo = min(max(w.first[a] - k0, 0), col_dim[a]);
        const int hi = min(max(w.last[a] - k0 + 1, 0), col_dim[a]);
        bits &= below[base + hi] & ~below[base + lo];  // empty when hi <= lo: below[] only grows
        base += col_dim[a] + 1;
      }
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < cute::size<1>(s_rc); ++ni)
        if (!((bits >> ni) & 1u)) s_rc(mi, ni) = -INFINITY;
    }
  }
};

// Fills the windows of rows row0 .. row0 + count - 1 of the CTA's tile, one row per lane below
// count (rows past an axis end: Axis::row_window).
template <int kRowTile, int kColTile, class Axis>
__device__ void na_fill_row_windows(NaMaskSmem<kRowTile, kColTile>* sm, const Axis (&axis)[kAxes],
                                    const NaTileShape& row_shape, const int (&row_origin)[kAxes], int row0, int count,
                                    int lane) {
  if (lane >= count) return;
  const int row = row0 + lane;
  NaRowWindow w;
  CUTLASS_PRAGMA_UNROLL
  for (int a = 0; a < kAxes; ++a) axis[a].row_window(row_origin[a] + row_shape.offset(row, a), w.first[a], w.last[a]);
  w.pad0 = w.pad1 = 0;
  sm->windows[row] = w;
}

// Fills the column sets (they depend on the column tile shape only). coord_rc: this thread's
// accumulator coordinates as (rows, cols); all consumer threads take part.
template <int kRowTile, int kColTile, class TensorC>
__device__ void na_fill_column_sets(NaMaskSmem<kRowTile, kColTile>* sm, const NaTileShape& col_shape,
                                    const TensorC& coord_rc, int mma_tid, int num_threads) {
  const int entries = col_shape.dim[0] + col_shape.dim[1] + col_shape.dim[2] + kAxes;
  for (int e = mma_tid / 4; e < entries; e += num_threads / 4) {
    int a = 0, v = e;
    while (v > col_shape.dim[a]) v -= col_shape.dim[a] + 1, ++a;
    uint32_t bits = 0;
    CUTLASS_PRAGMA_UNROLL
    for (int ni = 0; ni < cute::size<1>(coord_rc); ++ni)
      if (col_shape.offset(cute::get<1>(coord_rc(0, ni)), a) < v) bits |= 1u << ni;
    sm->below[mma_tid % 4][e] = bits;
  }
}

}  // namespace attnx::na

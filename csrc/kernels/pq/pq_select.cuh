// The unsorted finish of the PQ top-k selection (PqTopkParams::sorted = false): one warp picks
// the k best of a row's candidates without sorting them by score, then writes their key indices
// in ascending order.
//
// Candidates are ranked by (score descending, key index ascending), the order the sorted finish
// produces, so both finishes choose the same set. The cut is found a bit at a time: the k-th
// largest score key (a float mapped to an order-preserving uint32) is the largest T with at least
// k candidates >= T, 32 warp-wide counts; when more candidates tie at T than are still needed,
// the same search over the ties' inverted indices picks the lowest ones. About 32 x (candidates
// per lane) compares per lane, against ~55 x 32 compare-exchanges per lane for the register sort
// of 1024 entries.
#pragma once

#include <climits>
#include <cstdint>

#include "pq_params.h"

namespace attnx::pq {

namespace select_detail {
constexpr unsigned kFull = 0xffffffffu;
}

// Larger score -> larger key; 0 is below every finite score (it stands for an empty slot).
__device__ __forceinline__ uint32_t score_key(float s) {
  const uint32_t u = __float_as_uint(s);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// A candidate is among the k best iff key > t, or key == t and idx <= last_idx.
struct TopKCut {
  uint32_t t = 0;
  int32_t last_idx = INT_MAX;
  __device__ __forceinline__ bool takes(const PqCandidate& e) const {
    const uint32_t u = score_key(e.score);
    return u > t || (u == t && e.idx <= last_idx);
  }
};

// The largest T with at least `need` values >= T over the warp; count_at_least(c) counts this
// lane's values >= c.
template <class CountAtLeast>
__device__ __forceinline__ uint32_t kth_largest_key(int need, CountAtLeast&& count_at_least) {
  uint32_t t = 0;
#pragma unroll 1
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t c = t | (1u << bit);
    if ((int)__reduce_add_sync(select_detail::kFull, (unsigned)count_at_least(c)) >= need) t = c;
  }
  return t;
}

// The cut for the k best of the warp's candidates (more than k of them). for_each(f) calls
// f(entry) for each of this lane's candidates.
template <class ForEach>
__device__ TopKCut top_k_cut(int k, ForEach&& for_each) {
  TopKCut cut;
  cut.t = kth_largest_key(k, [&](uint32_t c) {
    int n = 0;
    for_each([&](const PqCandidate& e) { n += score_key(e.score) >= c; });
    return n;
  });
  int above = 0, ties = 0;
  for_each([&](const PqCandidate& e) {
    const uint32_t u = score_key(e.score);
    above += u > cut.t;
    ties += u == cut.t;
  });
  above = (int)__reduce_add_sync(select_detail::kFull, (unsigned)above);
  ties = (int)__reduce_add_sync(select_detail::kFull, (unsigned)ties);
  const int need = k - above;
  if (ties > need) {  // the `need` lowest indices among the ties: the largest values of ~idx
    const uint32_t inv = kth_largest_key(need, [&](uint32_t c) {
      int n = 0;
      for_each([&](const PqCandidate& e) { n += score_key(e.score) == cut.t && ~(uint32_t)e.idx >= c; });
      return n;
    });
    cut.last_idx = (int32_t)~inv;
  }
  return cut;
}

// out[0, k): the chosen candidates of src[0, count) (in ascending key order already) in that
// order, -1 past them; count <= k takes every candidate.
__device__ inline void write_top_k_in_order(const PqCandidate* src, int count, int k, int32_t* out, int lane) {
  TopKCut cut;
  if (count > k)
    cut = top_k_cut(k, [&](auto&& f) {
      for (int t = lane; t < count; t += 32) f(src[t]);
    });
  const unsigned lanes_below = (1u << lane) - 1;
  int base = 0;
  for (int t0 = 0; t0 < count; t0 += 32) {
    const int t = t0 + lane;
    PqCandidate e{0.f, -1};
    bool take = false;
    if (t < count) e = src[t], take = count <= k || cut.takes(e);
    const unsigned m = __ballot_sync(select_detail::kFull, take);
    if (take) out[base + __popc(m & lanes_below)] = e.idx;
    base += __popc(m);
  }
  for (int t = base + lane; t < k; t += 32) out[t] = -1;
}

// The same for candidates in any order (at least k of them, key indices below `keys`): the
// chosen keys are marked in `bits` (this warp's (keys + 31) / 32 words of shared memory) and read
// back in ascending order. The candidates are read from `src` (global or shared memory); up to
// 1024 of them are held in registers for the cut's 32 counting passes.
__device__ inline void write_top_k_ascending(const PqCandidate* src, int count, int k, int keys, uint32_t* bits,
                                             int32_t* out, int lane) {
  constexpr int kRegs = 32;
  const int words = (keys + 31) / 32;
  for (int w = lane; w < words; w += 32) bits[w] = 0;
  if (count <= kRegs * 32) {
    PqCandidate v[kRegs];
#pragma unroll
    for (int r = 0; r < kRegs; ++r)
      v[r] = r * 32 + lane < count ? src[r * 32 + lane] : PqCandidate{__uint_as_float(0xffffffffu), -1};
    // Empty slots carry score key 0 (a NaN pattern), which no count (c >= 1) and no cut takes.
    const TopKCut cut = top_k_cut(k, [&](auto&& f) {
#pragma unroll
      for (int r = 0; r < kRegs; ++r) f(v[r]);
    });
    __syncwarp();
#pragma unroll
    for (int r = 0; r < kRegs; ++r)
      if (v[r].idx >= 0 && cut.takes(v[r])) atomicOr(&bits[v[r].idx >> 5], 1u << (v[r].idx & 31));
  } else {
    const TopKCut cut = top_k_cut(k, [&](auto&& f) {
      for (int t = lane; t < count; t += 32) f(src[t]);
    });
    __syncwarp();
    for (int t = lane; t < count; t += 32) {
      const PqCandidate e = src[t];
      if (cut.takes(e)) atomicOr(&bits[e.idx >> 5], 1u << (e.idx & 31));
    }
  }
  __syncwarp();
  int base = 0;
  for (int w0 = 0; w0 < words; w0 += 32) {
    const uint32_t w = w0 + lane < words ? bits[w0 + lane] : 0u;
    const int c = __popc(w);
    int incl = c;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(select_detail::kFull, incl, o);
      if (lane >= o) incl += y;
    }
    int pos = base + incl - c;
    for (uint32_t x = w; x != 0u; x &= x - 1) out[pos++] = (w0 + lane) * 32 + __ffs((int)x) - 1;
    base += __shfl_sync(select_detail::kFull, incl, 31);
  }
  for (int t = base + lane; t < k; t += 32) out[t] = -1;
}

}  // namespace attnx::pq

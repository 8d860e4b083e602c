// PQ top-k selection (SPT): the LUT search (one warp per query row, no score matrix anywhere),
// which also finishes the rows that the tensor-core scan (pq_scan.cu) narrowed to a candidate
// list: such a row only sorts its list.
//
// A row's scores are sums of M lookups into its LUT (M x 256 floats in shared memory), cheap
// enough to recompute, so the search streams the row's codes a few times instead of storing
// Lk scores. Bins of the score range [lo, hi] (sum over m of the LUT row's min / max) order the
// keys: a key in a lower bin scores below every key in a higher one.
//   0. (long rows) a threshold bin from a histogram of every 8th key (bins spanning those
//      keys' scores), aimed at ~1.25 k keys above it, and one pass collecting those keys: done
//      if it caught between k and the buffer's size, which it almost always does;
//   1. otherwise, a histogram of all keys; the bin holding the k-th largest score splits them
//      into "above" (taken), "below" (dropped) and that bin's keys;
//   2. while that bin holds more keys than the selection buffer has room for, histogram its keys
//      again with kBins times finer bins (up to kLevels levels);
//   3. one collecting pass writes the taken keys and the bin's keys, in key order, to the buffer.
// A bitonic sort puts the buffer in descending score order (equal scores: lower index first), or,
// unsorted (p.sorted false), the k best are picked from the buffer (pq_select.cuh) and written in
// its order, which is key order.
// Only keys still tied after kLevels levels (about 30 bits of the score range: in practice,
// equal scores) are chosen by index.
//
// Codes are read as one M-byte vector per key; with head-major codes (row stride M) a warp reads
// 32 consecutive keys' codes in one transaction. The LUT lookups (random codes: ~2.8-way bank
// conflicts) bound the scoring rate, and the loop runs 4-5x short of even that
// (docs/perf-notes.md): long rows go through the scan first.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../common/kernel_attributes.h"
#include "pq_api.h"
#include "pq_dtype.cuh"
#include "pq_scan.h"
#include "pq_select.cuh"

namespace attnx::pq {
namespace {

constexpr int kLutCols = 256;  // one LUT row per subspace, padded to 256 codes (-inf beyond C)
constexpr int kMaxDim = 256;   // head dim bound: the query row is staged in shared memory
constexpr int kBins = 1024;    // histogram bins per refinement level
constexpr int kLevels = 3;
constexpr int kSlack = 256;    // buffer room for the threshold bin's keys beyond k
constexpr int kSampleStride = 8;  // the first threshold guess histograms every 8th key
constexpr int kMaxWarps = 16;
constexpr unsigned kFull = 0xffffffffu;

using Entry = PqCandidate;

__device__ __forceinline__ bool before(const Entry& a, const Entry& b) {
  return a.score > b.score || (a.score == b.score && a.idx < b.idx);
}

__host__ __device__ constexpr int pow2_ceil(int x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

inline int selection_slots(int topk) { return pow2_ceil(topk + kSlack); }

inline int64_t warp_smem_bytes(int m, int topk) {
  const int64_t work = selection_slots(topk) * (int64_t)sizeof(Entry);
  return (kMaxDim + (int64_t)m * kLutCols) * 4 + (work > kBins * 4 ? work : kBins * 4);
}

// The M codes of one key, as 32-bit words.
template <int M>
__device__ __forceinline__ void load_codes(const uint8_t* row, uint32_t (&w)[M / 4]) {
  if constexpr (M == 4) {
    w[0] = *reinterpret_cast<const uint32_t*>(row);
  } else if constexpr (M == 8) {
    const uint2 v = *reinterpret_cast<const uint2*>(row);
    w[0] = v.x, w[1] = v.y;
  } else {
    const uint4 v = *reinterpret_cast<const uint4*>(row);
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  }
}

// Summed in m order, as the reference does.
template <int M>
__device__ __forceinline__ float pq_score(const float* lut, const uint32_t (&w)[M / 4]) {
  float s = 0.f;
#pragma unroll
  for (int m = 0; m < M; ++m) s += lut[m * kLutCols + ((w[m / 4] >> (8 * (m % 4))) & 0xff)];
  return s;
}
template <int M>
__device__ __forceinline__ float pq_score(const float* lut, const uint8_t* row) {
  uint32_t w[M / 4];
  load_codes<M>(row, w);
  return pq_score<M>(lut, w);
}

// f(j, valid, score) for the keys j = lane, lane + 32, ... (every lane runs the same iterations,
// so f may use warp votes; score is 0 where !valid). Codes arrive kBatch keys per lane at a time,
// the next batch loading while this one is scored: the loop is bound by L2 latency otherwise.
template <int M, class F>
__device__ __forceinline__ void for_each_key(const float* lut, const uint8_t* codes, int64_t row_stride, int allowed,
                                             int lane, F&& f) {
  constexpr int kBatch = 4;
  uint32_t cur[kBatch][M / 4] = {}, nxt[kBatch][M / 4] = {};
  auto load = [&](int j0, uint32_t(&w)[kBatch][M / 4]) {
#pragma unroll
    for (int u = 0; u < kBatch; ++u)
      if (j0 + 32 * u + lane < allowed) load_codes<M>(codes + (j0 + 32 * u + lane) * row_stride, w[u]);
  };
  load(0, cur);
  for (int j0 = 0; j0 < allowed; j0 += 32 * kBatch) {
    if (j0 + 32 * kBatch < allowed) load(j0 + 32 * kBatch, nxt);
    float sc[kBatch];  // all of the batch's lookups first: 4 keys' worth in flight per lane
#pragma unroll
    for (int u = 0; u < kBatch; ++u) sc[u] = pq_score<M>(lut, cur[u]);
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int j = j0 + 32 * u + lane;
      f(j, j < allowed, j < allowed ? sc[u] : 0.f);
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u)
#pragma unroll
      for (int w = 0; w < M / 4; ++w) cur[u][w] = nxt[u][w];
  }
}

// The CTA's LUTs, all warps together: thread t computes entries e = t, t + blockDim, ... of
// every warp's table, so each centroid is read once per CTA (not once per query row).
template <int M>
__device__ void build_luts(const float* cent, int nc, int ds, char* smem, int64_t warp_bytes, int warps) {
  for (int e = threadIdx.x; e < M * kLutCols; e += blockDim.x) {
    const int m = e / kLutCols, c = e % kLutCols;
    float acc[kMaxWarps];
#pragma unroll
    for (int w = 0; w < kMaxWarps; ++w) acc[w] = c < nc ? 0.f : -INFINITY;  // no code reaches c >= C
    if (c < nc) {
      const float* cr = cent + ((int64_t)m * nc + c) * ds;
      for (int t = 0; t < ds; ++t) {
        const float x = __ldg(cr + t);
#pragma unroll
        for (int w = 0; w < kMaxWarps; ++w)
          if (w < warps) acc[w] = fmaf(reinterpret_cast<const float*>(smem + w * warp_bytes)[m * ds + t], x, acc[w]);
      }
    }
#pragma unroll
    for (int w = 0; w < kMaxWarps; ++w)
      if (w < warps) reinterpret_cast<float*>(smem + w * warp_bytes)[kMaxDim + e] = acc[w];
  }
}

// The refinement levels: level l's bin of a score is floor((s - lo[l]) * inv[l]) clamped to
// [0, kBins); a NaN score lands in bin 0 (comparisons with NaN are false). Loops over levels are
// unrolled so the arrays stay in registers.
struct Levels {
  float lo[kLevels], inv[kLevels];
  int chosen[kLevels];
  int count = 0;  // levels decided

  __device__ __forceinline__ int bin(float s, int l) const {
    const float t = (s - lo[l]) * inv[l];
    return t >= (float)(kBins - 1) ? kBins - 1 : (t > 0.f ? (int)t : 0);
  }
  // +1: above the chosen bins of the first `levels` levels (taken), -1: below (dropped), 0: in
  // every one of them.
  __device__ __forceinline__ int classify(float s, int levels) const {
    int cls = 0;
#pragma unroll
    for (int l = 0; l < kLevels; ++l)
      if (l < levels && cls == 0) {
        const int b = bin(s, l);
        cls = b > chosen[l] ? 1 : (b < chosen[l] ? -1 : 0);
      }
    return cls;
  }
};

// One shared-memory atomic per distinct bin of the warp (the scores of a row crowd a few bins,
// so plain atomics would serialise); lanes with bin < 0 add nothing.
__device__ __forceinline__ void warp_count(int* hist, int bin, int lane) {
  const unsigned peers = __match_any_sync(kFull, bin);
  if (bin >= 0 && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
}

// The bin holding the need-th largest counted score (counts >= need in all): the bin, the count
// strictly above it and its own count. Lane 0 owns the top kBins / 32 bins.
__device__ void find_bin(const int* hist, int need, int lane, int& bin, int& above, int& at) {
  constexpr int kPer = kBins / 32;
  const int base = kBins - (lane + 1) * kPer;
  int sum = 0;
  for (int t = 0; t < kPer; ++t) sum += hist[base + t];
  int incl = sum;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(kFull, incl, o);
    if (lane >= o) incl += y;
  }
  const int excl = incl - sum;
  const int owner = __ffs(__ballot_sync(kFull, excl < need && need <= incl)) - 1;
  int b = 0, a = 0, c = 0;
  if (lane == owner) {
    int run = excl;
    for (int t = kPer - 1; t >= 0; --t) {
      const int h = hist[base + t];
      if (run + h >= need) {
        b = base + t, a = run, c = h;
        break;
      }
      run += h;
    }
  }
  bin = __shfl_sync(kFull, b, owner);
  above = __shfl_sync(kFull, a, owner);
  at = __shfl_sync(kFull, c, owner);
}

// Descending by `before`, n a power of two, in shared memory (lists longer than 1024).
__device__ void bitonic_sort(Entry* buf, int n, int lane) {
  for (int size = 2; size <= n; size <<= 1)
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int t = lane; t < n / 2; t += 32) {
        const int i = ((t & ~(stride - 1)) << 1) | (t & (stride - 1)), j = i + stride;
        const Entry a = buf[i], b = buf[j];
        const bool first_half = (i & size) == 0;
        if (first_half ? before(b, a) : before(a, b)) buf[i] = b, buf[j] = a;
      }
      __syncwarp();
    }
}

// The same network on E * 32 entries in registers, entry e = r * 32 + lane: strides of 32 and
// more pair registers of one lane, shorter ones pair lanes (shuffles). Fully unrolled, so a sort
// of 1024 costs ~55 x 32 compare-exchanges per lane and no shared-memory traffic.
template <int E>
__device__ __forceinline__ void register_sort(Entry (&v)[E], int lane) {
  constexpr int kN = E * 32;
#pragma unroll
  for (int size = 2; size <= kN; size <<= 1) {
#pragma unroll
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      if (stride >= 32) {
        const int rs = stride / 32;
#pragma unroll
        for (int r = 0; r < E; ++r)
          if ((r & rs) == 0) {
            Entry& a = v[r];
            Entry& b = v[r | rs];
            const bool first_half = ((r * 32 + lane) & size) == 0;
            if (first_half ? before(b, a) : before(a, b)) {
              const Entry x = a;
              a = b, b = x;
            }
          }
      } else {
#pragma unroll
        for (int r = 0; r < E; ++r) {
          const Entry o{__shfl_xor_sync(kFull, v[r].score, stride), __shfl_xor_sync(kFull, v[r].idx, stride)};
          // The lower position of a pair in a first-half block keeps the entry that comes first.
          const bool keep_first = ((lane & stride) == 0) == (((r * 32 + lane) & size) == 0);
          if (keep_first != before(v[r], o)) v[r] = o;
        }
      }
    }
  }
}

template <int E>
__device__ void register_sort_and_write(const Entry* buf, int count, int k, int32_t* out, int lane) {
  Entry v[E];
#pragma unroll
  for (int r = 0; r < E; ++r) v[r] = r * 32 + lane < count ? buf[r * 32 + lane] : Entry{-INFINITY, INT_MAX};
  register_sort<E>(v, lane);
#pragma unroll
  for (int r = 0; r < E; ++r)
    if (r * 32 + lane < k) out[r * 32 + lane] = r * 32 + lane < count ? v[r].idx : -1;
  for (int t = E * 32 + lane; t < k; t += 32) out[t] = -1;  // count <= E * 32: nothing left
}

// The first k of `count` entries (shared or global memory) in descending order to out (-1 past
// count), sorted in registers; false (nothing written) for more than 1024 entries.
__device__ bool sort_in_registers(const Entry* src, int count, int k, int32_t* out, int lane) {
  switch (pow2_ceil(count > 32 ? count : 32)) {
    case 32: return register_sort_and_write<1>(src, count, k, out, lane), true;
    case 64: return register_sort_and_write<2>(src, count, k, out, lane), true;
    case 128: return register_sort_and_write<4>(src, count, k, out, lane), true;
    case 256: return register_sort_and_write<8>(src, count, k, out, lane), true;
    case 512: return register_sort_and_write<16>(src, count, k, out, lane), true;
    case 1024: return register_sort_and_write<32>(src, count, k, out, lane), true;
  }
  return false;
}

// The same for entries in the warp's shared-memory buffer, which longer lists sort in place.
__device__ void sort_and_write(Entry* buf, int count, int k, int32_t* out, int lane) {
  if (sort_in_registers(buf, count, k, out, lane)) return;
  const int n = pow2_ceil(count);
  for (int t = count + lane; t < n; t += 32) buf[t] = Entry{-INFINITY, INT_MAX};
  __syncwarp();
  bitonic_sort(buf, n, lane);
  for (int t = lane; t < k; t += 32) out[t] = t < count ? buf[t].idx : -1;
}

// The query rows one launch finishes, and the scan's lists for them (cand == nullptr: none).
struct RowRange {
  int begin = 0, end = 0;
  const PqCandidate* cand = nullptr;  // [B, H, chunk_rows, slots], row i at i - begin
  const int* cand_count = nullptr;    // -1: the scan did not settle the row
  int chunk_rows = 0;
};

template <int M, typename QT>
__global__ void __launch_bounds__(kMaxWarps * 32) pq_topk_kernel(const PqTopkParams p, int warps, int slots,
                                                                  const RowRange rows) {
  extern __shared__ float4 smem4[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int i = rows.begin + blockIdx.x * warps + warp, h = blockIdx.y, b = blockIdx.z;
  const int64_t list = ((int64_t)b * p.num_heads + h) * rows.chunk_rows + (i - rows.begin);
  // Rows with a list are pq_sort_lists_kernel's.
  const bool live = i < rows.end && (rows.cand_count == nullptr || rows.cand_count[list] < 0);
  const int64_t work_bytes = (int64_t)slots * sizeof(Entry) > kBins * 4 ? (int64_t)slots * sizeof(Entry) : kBins * 4;
  const int64_t warp_bytes = (kMaxDim + M * kLutCols) * 4 + work_bytes;
  char* mine = reinterpret_cast<char*>(smem4) + warp * warp_bytes;
  float* qrow = reinterpret_cast<float*>(mine);
  float* lut = qrow + kMaxDim;
  int* hist = reinterpret_cast<int*>(lut + M * kLutCols);  // the levels' histograms, then the buffer
  Entry* buf = reinterpret_cast<Entry*>(hist);

  // The query row (zeros for a warp past the last query or with a list: it helps build the
  // LUTs, then leaves). CTAs whose rows all have lists leave at once.
  const int ds = p.sub_dim, nc = p.num_centroids, d = M * ds;
  if (__syncthreads_or(live)) {
    const QT* q = static_cast<const QT*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
    for (int t = lane; t < d; t += 32) qrow[t] = live ? to_float(q[i * p.q_row_stride + t]) : 0.f;
    __syncthreads();
    build_luts<M>(p.centroids + (int64_t)h * M * nc * ds, nc, ds, reinterpret_cast<char*>(smem4), warp_bytes, warps);
    __syncthreads();
  }
  if (!live) return;  // from here on, warps never synchronise with each other

  const uint8_t* codes = p.codes + b * p.codes_batch_stride + h * p.codes_head_stride;
  const int64_t row_stride = p.codes_row_stride;
  auto score = [&](int j) { return pq_score<M>(lut, codes + j * row_stride); };
  const int allowed = p.causal ? min(max(i + p.seqlen_k - p.seqlen_q + 1, 0), p.seqlen_k) : p.seqlen_k;
  const int k = p.topk;
  int32_t* out = p.out + (((int64_t)b * p.seqlen_q + i) * p.num_heads + h) * k;

  int count = 0;
  if (allowed <= k) {  // every allowed key is selected
    for (int j = lane; j < allowed; j += 32) buf[j] = Entry{score(j), j};
    count = allowed;
  } else {
    // Bounds of every score: per subspace the LUT row's min and max (over real codes).
    float lo = 0.f, hi = 0.f;
    for (int m = 0; m < M; ++m) {
      float mn = INFINITY, mx = -INFINITY;
      for (int c = lane; c < nc; c += 32) mn = fminf(mn, lut[m * kLutCols + c]), mx = fmaxf(mx, lut[m * kLutCols + c]);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        mn = fminf(mn, __shfl_xor_sync(kFull, mn, o));
        mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, o));
      }
      lo += mn, hi += mx;
    }
    Levels lv;
    lv.lo[0] = lo;
    lv.inv[0] = hi > lo ? (float)kBins / (hi - lo) : 0.f;
    if (!isfinite(lv.inv[0])) lv.inv[0] = 0.f;
    const unsigned lanes_below = (1u << lane) - 1;
    bool done = false;
    if (allowed >= 2 * kSampleStride * k) {
      // A threshold from every kSampleStride-th key, aimed at ~1.25 k keys above it; one pass
      // collects them. Exact whenever it catches between k and `slots` keys (a key below the
      // threshold bin scores below every key in or above it), else the full search below runs.
      // The sample's own score range sets the bins ([lo, hi] is far wider than the scores).
      float smin = INFINITY, smax = -INFINITY;
      for (int j = lane * kSampleStride; j < allowed; j += 32 * kSampleStride) {
        const float sc = score(j);
        smin = fminf(smin, sc), smax = fmaxf(smax, sc);
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        smin = fminf(smin, __shfl_xor_sync(kFull, smin, o));
        smax = fmaxf(smax, __shfl_xor_sync(kFull, smax, o));
      }
      Levels sample;
      sample.lo[0] = smin;
      sample.inv[0] = smax > smin ? (float)kBins / (smax - smin) : 0.f;
      if (!isfinite(sample.inv[0])) sample.inv[0] = 0.f;
      for (int t = lane; t < kBins; t += 32) hist[t] = 0;
      __syncwarp();
      for (int j0 = 0; j0 < allowed; j0 += 32 * kSampleStride) {
        const int j = j0 + lane * kSampleStride;
        warp_count(hist, j < allowed ? sample.bin(score(j), 0) : -1, lane);
      }
      __syncwarp();
      int bin, above, at;
      find_bin(hist, (5 * k / 4 + kSampleStride - 1) / kSampleStride + 1, lane, bin, above, at);
      __syncwarp();  // the histogram is read before the buffer overwrites it
      for_each_key<M>(lut, codes, row_stride, allowed, lane, [&](int j, bool valid, float sc) {
        const bool take = valid && sample.bin(sc, 0) >= bin;
        const unsigned take_mask = __ballot_sync(kFull, take);
        const int pos = count + __popc(take_mask & lanes_below);
        if (take && pos < slots) buf[pos] = Entry{sc, j};
        count += __popc(take_mask);
      });
      done = count >= k && count <= slots;
      if (!done) count = 0;
      __syncwarp();
    }
    if (!done) {
      int taken = 0, need = k;
      bool truncate = false;  // the last bin still holds more keys than fit: take its first `need`
#pragma unroll
      for (int l = 0; l < kLevels; ++l) {
        for (int t = lane; t < kBins; t += 32) hist[t] = 0;
        __syncwarp();
        for_each_key<M>(lut, codes, row_stride, allowed, lane, [&](int, bool valid, float sc) {
          warp_count(hist, valid && lv.classify(sc, l) == 0 ? lv.bin(sc, l) : -1, lane);
        });
        __syncwarp();
        int bin, above, at;
        find_bin(hist, need, lane, bin, above, at);
        __syncwarp();  // the histogram is read before the next level clears it
        lv.chosen[l] = bin;
        lv.count = l + 1;
        taken += above, need -= above;
        if (taken + at <= slots) break;
        const float inv = lv.inv[l] * kBins;
        if (l + 1 == kLevels || !isfinite(inv)) {
          truncate = true;
          break;
        }
        if (l + 1 < kLevels) {
          lv.lo[l + 1] = lv.lo[l] + (float)bin / lv.inv[l];
          lv.inv[l + 1] = inv;
        }
      }
      // Collect, in key order: the keys above the chosen bins and those in them.
      int in_bin = 0;
      for_each_key<M>(lut, codes, row_stride, allowed, lane, [&](int j, bool valid, float sc) {
        const int cls = valid ? lv.classify(sc, lv.count) : -1;
        const unsigned at_mask = __ballot_sync(kFull, cls == 0);
        bool take = cls == 1;
        if (cls == 0) take = !truncate || in_bin + __popc(at_mask & lanes_below) < need;
        in_bin += __popc(at_mask);
        const unsigned take_mask = __ballot_sync(kFull, take);
        if (take) buf[count + __popc(take_mask & lanes_below)] = Entry{sc, j};
        count += __popc(take_mask);
      });
    }
  }
  __syncwarp();
  if (p.sorted)
    sort_and_write(buf, count, k, out, lane);
  else
    write_top_k_in_order(buf, count, k, out, lane);
}

// Rows the scan settled: one warp sorts its list (the top k by the scan's scores are the answer),
// or, unsorted, picks the top k and writes them in key order through a bitmap of the row's keys
// (the scan runs only for Lk < 2^16: at most 8 KB per warp). No LUTs, so many warps share an SM;
// sorted lists longer than 1024 sort in shared memory.
constexpr int kListWarps = 8;
__global__ void __launch_bounds__(kListWarps * 32) pq_sort_lists_kernel(const PqTopkParams p, int slots,
                                                                        int64_t warp_bytes, const RowRange rows) {
  extern __shared__ float4 smem4[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int i = rows.begin + blockIdx.x * warps + warp, h = blockIdx.y, b = blockIdx.z;
  if (i >= rows.end) return;
  const int64_t list = ((int64_t)b * p.num_heads + h) * rows.chunk_rows + (i - rows.begin);
  const int count = rows.cand_count[list];
  if (count < 0) return;
  const PqCandidate* cand = rows.cand + list * slots;
  int32_t* out = p.out + (((int64_t)b * p.seqlen_q + i) * p.num_heads + h) * p.topk;
  char* mine = reinterpret_cast<char*>(smem4) + warp * warp_bytes;
  if (!p.sorted) {
    write_top_k_ascending(cand, count, p.topk, p.seqlen_k, reinterpret_cast<uint32_t*>(mine), out, lane);
  } else if (!sort_in_registers(cand, count, p.topk, out, lane)) {
    Entry* buf = reinterpret_cast<Entry*>(mine);
    for (int t = lane; t < count; t += 32) buf[t] = cand[t];
    __syncwarp();
    sort_and_write(buf, count, p.topk, out, lane);
  }
}

Status launch_lists(const PqTopkParams& p, const RowRange& rows, cudaStream_t stream) {
  constexpr int kMaxSmem = 227 * 1024;  // the sm_90 opt-in limit, set once whatever k a call has
  const int slots = selection_slots(p.topk);
  // Sorted: lists up to 1024 sort in registers, longer ones in shared memory. Unsorted: the
  // bitmap of the row's keys.
  const int64_t per_warp = !p.sorted ? ((int64_t)p.seqlen_k + 31) / 32 * 4
                                     : (slots > 1024 ? slots * (int64_t)sizeof(Entry) : 0);
  // pq_topk_supported keeps one LUT warp's buffer (more than a sorted per_warp) within kMaxSmem;
  // the bitmap is at most 8 KB (the scan needs Lk < 2^16).
  const int warps = per_warp > 0 ? (int)std::min<int64_t>(kListWarps, kMaxSmem / per_warp) : kListWarps;
  static KernelAttributesOnce attributes;
  if (attributes.set(pq_sort_lists_kernel, kMaxSmem) != cudaSuccess) return Status::kCudaError;
  const dim3 grid((rows.end - rows.begin + warps - 1) / warps, p.num_heads, p.batch);
  pq_sort_lists_kernel<<<grid, warps * 32, warps * per_warp, stream>>>(p, slots, per_warp, rows);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

template <int M, typename QT>
Status launch(const PqTopkParams& p, const RowRange& rows, cudaStream_t stream) {
  int device = 0, max_smem = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    return Status::kCudaError;
  const int64_t per_warp = warp_smem_bytes(M, p.topk);
  int warps = (int)(max_smem / per_warp);
  if (warps < 1) return Status::kUnsupported;
  if (warps > kMaxWarps) warps = kMaxWarps;
  const int64_t smem = warps * per_warp;
  auto kernel = pq_topk_kernel<M, QT>;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
    return Status::kCudaError;
  const dim3 grid((rows.end - rows.begin + warps - 1) / warps, p.num_heads, p.batch);
  kernel<<<grid, warps * 32, smem, stream>>>(p, warps, selection_slots(p.topk), rows);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

Status launch_rows(const PqTopkParams& p, const RowRange& rows, cudaStream_t stream) {
  return with_q_type(p.q_type, [&](auto qt) {
    using QT = decltype(qt);
    switch (p.num_subspaces) {
      case 4: return launch<4, QT>(p, rows, stream);
      case 8: return launch<8, QT>(p, rows, stream);
      case 16: return launch<16, QT>(p, rows, stream);
    }
    return Status::kUnsupported;
  });
}

}  // namespace

bool pq_topk_supported(const PqTopkParams& p) {
  const int m = p.num_subspaces;
  if (m != 4 && m != 8 && m != 16) return false;
  if (p.num_centroids < 1 || p.num_centroids > kLutCols || p.sub_dim < 1 || m * p.sub_dim > kMaxDim) return false;
  if (p.topk < 1 || p.topk > p.seqlen_k || p.num_heads > 65535 || p.batch > 65535) return false;
  // Codes are read as M-byte vectors.
  if (reinterpret_cast<uintptr_t>(p.codes) % m || p.codes_batch_stride % m || p.codes_row_stride % m ||
      p.codes_head_stride % m)
    return false;
  return warp_smem_bytes(m, p.topk) <= 227 * 1024;
}

// Tuning aid (ATTNX_PQ_SCAN_STATS set): how many rows of the first chunk the scan settled, and
// the mean list length, on stderr. Synchronises the stream.
void report_scan_stats(const PqTopkParams& p, const PqScanWork& w, cudaStream_t stream) {
  const int rows = std::min(w.chunk_rows, p.seqlen_q);
  std::vector<int> counts((size_t)p.batch * p.num_heads * w.chunk_rows);
  if (cudaMemcpyAsync(counts.data(), w.cand_count, counts.size() * sizeof(int), cudaMemcpyDeviceToHost, stream) !=
          cudaSuccess ||
      cudaStreamSynchronize(stream) != cudaSuccess)
    return;
  int64_t settled = 0, listed = 0, total = 0;
  for (int bh = 0; bh < p.batch * p.num_heads; ++bh)
    for (int r = 0; r < rows; ++r, ++total) {
      const int c = counts[(size_t)bh * w.chunk_rows + r];
      if (c >= 0) ++settled, listed += c;
    }
  std::fprintf(stderr, "attnx pq scan: %lld of %lld rows settled, %.1f candidates per settled row (k %d, slots %d)\n",
               (long long)settled, (long long)total, settled ? (double)listed / settled : 0.0, p.topk, w.slots);
}

int64_t pq_topk_workspace_bytes(const PqTopkParams& p) {
  const int slots = selection_slots(p.topk);
  if (!pq_topk_supported(p) || p.batch == 0 || p.seqlen_q == 0 || p.num_heads == 0 || !pq_scan_applies(p, slots))
    return 0;
  int64_t bytes = 0;
  pq_scan_layout(p, slots, nullptr, &bytes);
  return bytes;
}

// Long rows: the scan lists candidates for a chunk of rows (every batch and head), then the LUT
// kernel sorts those lists and searches the rows the scan left; chunks bound the lists' memory.
Status pq_topk(const PqTopkParams& p, cudaStream_t stream) {
  if (!pq_topk_supported(p)) return Status::kUnsupported;
  if (p.batch == 0 || p.seqlen_q == 0 || p.num_heads == 0) return Status::kSuccess;
  const int slots = selection_slots(p.topk);
  if (!pq_scan_applies(p, slots)) return launch_rows(p, RowRange{0, p.seqlen_q}, stream);
  if (p.workspace == nullptr) return Status::kInvalidArgument;
  int64_t bytes = 0;
  const PqScanWork w = pq_scan_layout(p, slots, static_cast<char*>(p.workspace), &bytes);
  Status st = pq_scan_prepare(p, w, stream);
  for (int r0 = 0; r0 < p.seqlen_q && st == Status::kSuccess; r0 += w.chunk_rows) {
    st = pq_scan_rows(p, w, r0, stream);
    if (st == Status::kSuccess && r0 == 0 && std::getenv("ATTNX_PQ_SCAN_STATS") != nullptr)
      report_scan_stats(p, w, stream);
    if (st == Status::kSuccess) {
      const RowRange rows{r0, std::min(p.seqlen_q, r0 + w.chunk_rows), w.cand, w.cand_count, w.chunk_rows};
      st = launch_lists(p, rows, stream);
      if (st == Status::kSuccess) st = launch_rows(p, rows, stream);  // the rows the scan left
    }
  }
  return st;
}

}  // namespace attnx::pq

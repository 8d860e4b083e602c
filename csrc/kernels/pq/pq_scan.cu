// PQ top-k candidates on tensor cores (SPT).
//
// score(i, j) = q_i . k~_j, with k~_j the concatenation of key j's centroids: a Q tile's scores
// against a tile of decoded keys are a GEMM, so they run on mma.sync (fp16 in, fp32 out) instead
// of M shared-memory lookups per pair. Per CTA: 128 query rows (8 warps x one m16 block), one
// (batch, head), key tiles of 64 streamed through a cp.async ring, twice:
//   pass 1: s1 = q_hi . k_hi (one fp16 product per term) into a per-row histogram of 256 bins
//           over [-R, R] (R bounds |score|: ||q|| times the largest decoded key norm); the bin
//           holding the k-th largest s1 gives a threshold t with at least k keys at s1 >= t;
//   pass 2: s2 = q_lo . k_hi + q_hi . k_lo + q_hi . k_hi (fp16 hi/lo splits: ~fp32 accuracy;
//           q_lo is zero up to subnormal rounding for fp16/bf16 q, whose term is skipped);
//           every key with s2 >= t - delta is written to the row's candidate list.
// |s1 - s2| <= delta (below) for every key, so the k keys at s1 >= t all make the list and every
// key left out scores below all of them: the k best by s2 (ties by index) are in the list, and
// the LUT kernel's finish only has to sort it. A row whose list could outgrow its slots (the
// histogram counts bound it before pass 2: keys at s1 >= t - 2 delta), or whose inputs are not
// finite, is left to the LUT kernel's exact search.
//
// Scaling: keys are decoded times 2^-e_h (max |centroid| of head h below 1) and each query row
// times its own power of two, so no fp16 value overflows and the scores of a row keep their
// order; a row's scores are compared only with each other.
// Error bound (scaled values <= 1, u = 2^-11): fp16 rounding costs at most 2u(1 + u) of
// sum_d |q_d k_d| <= ||q|| K (K: bound on the key norms), subnormals at most 2^-16 in all, and
// the fp32 accumulation of up to 3 x 256 exact products at most 768 * 2^-23 of the same sum;
// delta = 2^-9 R + 2^-13 covers |s1 - s2| (at most ~2^-9.7 R + 2^-15) with room to spare.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "../common/kernel_attributes.h"
#include "pq_dtype.cuh"
#include "pq_scan.h"

namespace attnx::pq {
namespace {

constexpr int kRows = 128;  // query rows per CTA: 8 warps, one m16 row block each
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kKeys = 64;                  // keys per tile
constexpr int kBins = 256;                 // per-row histogram bins, two 16-bit counts per word
constexpr int kHistWords = kBins / 2;
constexpr int64_t kChunkBytes = 256 << 20;  // candidate lists in flight at once
constexpr unsigned kFull = 0xffffffffu;

template <int kD>
struct ScanTraits {
  static constexpr int kSteps = kD / 16;  // mma k-steps
  static constexpr int kStages = 2;  // at D 64, two CTAs (~98 KB each) share an SM
  static constexpr int kTileBytes = kKeys * kD * 2;  // one of hi / lo
  static constexpr int kRingBytes = kStages * 2 * kTileBytes;
  static constexpr int kSmemBytes = kRingBytes + kRows * kHistWords * 4 + kRows * 4 * 4;
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void mma_f16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_half2(__half lo, __half hi) {
  const __half2 v = __halves2half2(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// x = hi + lo + (rounding of lo), both fp16.
__device__ __forceinline__ void split_half(float x, __half& hi, __half& lo) {
  hi = __float2half_rn(x);
  lo = __float2half_rn(x - __half2float(hi));
}

// 2^-e with x * 2^-e in [0.5, 1) (x > 0 finite), the exponent clamped so the factor stays a
// normal float.
__device__ __forceinline__ float pow2_scale(float x) {
  int e = 0;
  frexpf(x, &e);
  return ldexpf(1.f, -min(max(e, -126), 126));
}

__device__ __forceinline__ int hist_bin(float s, float lo, float inv) {
  const float x = (s - lo) * inv;
  return x >= (float)(kBins - 1) ? kBins - 1 : (x > 0.f ? (int)x : 0);
}

__device__ __forceinline__ int hist_count(const uint32_t* hist, int bin) {
  return (hist[bin >> 1] >> ((bin & 1) * 16)) & 0xffff;
}

template <typename F>
__device__ __forceinline__ float block_reduce(float v, float* red, F&& op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(kFull, v, o));
  __syncthreads();
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  v = red[0];
  for (int w = 1; w < (int)blockDim.x / 32; ++w) v = op(v, red[w]);
  return v;
}

// One CTA per head: the key scale 2^-e with max |centroid| * 2^-e < 1; 0 for a head with a
// non-finite centroid, whose keys then decode to zero, R = 0, and every row takes the LUT search.
__global__ void pq_head_kernel(const PqTopkParams p, PqScanWork w) {
  __shared__ float red[32];
  const int h = blockIdx.x, n = p.num_subspaces * p.num_centroids * p.sub_dim;
  const float* cent = p.centroids + (int64_t)h * n;
  float amax = 0.f;
  bool bad = false;
  for (int x = threadIdx.x; x < n; x += blockDim.x) {
    amax = fmaxf(amax, fabsf(cent[x]));
    bad |= !isfinite(cent[x]);
  }
  amax = block_reduce(amax, red, [](float a, float b) { return fmaxf(a, b); });
  const float any_bad = block_reduce(bad ? 1.f : 0.f, red, [](float a, float b) { return fmaxf(a, b); });
  if (threadIdx.x == 0) w.key_scale[h] = any_bad > 0.f ? 0.f : (amax > 0.f ? pow2_scale(amax) : 1.f);
}

// Scaled decoded keys, hi and lo halves: one thread per key row of [B, H, keys_pad, dim_pad]
// (padding rows and columns are zero), and per (batch, head) the largest scaled key norm
// (squared, as float bits: non-negative floats order like their bits). A code >= C (the Python
// API never makes one) is read as C - 1 so that nothing past the head's centroids is touched.
__global__ void pq_decode_kernel(const PqTopkParams p, PqScanWork w) {
  const int H = p.num_heads, d = p.num_subspaces * p.sub_dim;
  const int64_t total = (int64_t)p.batch * H * w.keys_pad;  // a multiple of 64: warps never straddle a head
  for (int64_t row = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; row < total;
       row += (int64_t)gridDim.x * blockDim.x) {
    const int j = (int)(row % w.keys_pad), h = (int)((row / w.keys_pad) % H), b = (int)(row / w.keys_pad / H);
    const float scale = w.key_scale[h];
    float norm2 = 0.f;
    for (int ch = 0; ch < w.dim_pad / 8; ++ch) {
      __half hi[8], lo[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int c = ch * 8 + e;
        float v = 0.f;
        if (scale > 0.f && j < p.seqlen_k && c < d) {  // scale 0: non-finite centroids stay unread
          const int m = c / p.sub_dim;
          const int code = min((int)p.codes[b * p.codes_batch_stride + (int64_t)j * p.codes_row_stride +
                                            h * p.codes_head_stride + m],
                               p.num_centroids - 1);
          v = p.centroids[(((int64_t)h * p.num_subspaces + m) * p.num_centroids + code) * p.sub_dim +
                          c % p.sub_dim] *
              scale;
        }
        norm2 = fmaf(v, v, norm2);
        split_half(v, hi[e], lo[e]);
      }
      *reinterpret_cast<uint4*>(w.keys_hi + row * w.dim_pad + ch * 8) = *reinterpret_cast<const uint4*>(hi);
      *reinterpret_cast<uint4*>(w.keys_lo + row * w.dim_pad + ch * 8) = *reinterpret_cast<const uint4*>(lo);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) norm2 = fmaxf(norm2, __shfl_xor_sync(kFull, norm2, o));
    if (threadIdx.x % 32 == 0) atomicMax(reinterpret_cast<int*>(w.key_norm2) + row / w.keys_pad, __float_as_int(norm2));
  }
}

// A 64-key tile of one [keys_pad, kD] matrix into shared memory: rows of kD halves, each 16-byte
// chunk c of key n stored at chunk c ^ (n % 8), so the 8 rows one ldmatrix phase reads sit in 8
// different bank groups.
template <int kD>
__device__ __forceinline__ void load_tile(uint32_t dst, const __half* src) {
  constexpr int kChunks = kD / 8;
  for (int x = threadIdx.x; x < kKeys * kChunks; x += kThreads) {
    const int key = x / kChunks, ch = x % kChunks;
    cp_async16(dst + key * kD * 2 + ((ch ^ (key & 7)) * 16), src + key * kD + ch * 8);
  }
}

template <int kD, typename QT>
__global__ void __launch_bounds__(kThreads) pq_scan_kernel(const PqTopkParams p, const PqScanWork w, int row_begin,
                                                          int sample) {
  using T = ScanTraits<kD>;
  extern __shared__ __align__(128) char smem[];
  uint32_t* hist = reinterpret_cast<uint32_t*>(smem + T::kRingBytes);  // [kRows][kHistWords]
  int* counter = reinterpret_cast<int*>(hist + kRows * kHistWords);    // candidates so far, -1: not settled
  float* row_thr = reinterpret_cast<float*>(counter + kRows);          // pass 2's bar
  float* row_r = row_thr + kRows;                                      // R of the row (0: no scan)
  float* row_delta = row_r + kRows;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z, H = p.num_heads, k = p.topk, slots = w.slots;
  const int chunk_row0 = blockIdx.x * kRows;
  const int row0 = row_begin + chunk_row0;
  const int row_end = min(p.seqlen_q, row_begin + w.chunk_rows);
  for (int x = tid; x < kRows * kHistWords; x += kThreads) hist[x] = 0;

  auto allowed_of = [&](int i) {
    if (i >= row_end) return 0;
    return p.causal ? min(max(i + p.seqlen_k - p.seqlen_q + 1, 0), p.seqlen_k) : p.seqlen_k;
  };
  // Keys any row of the CTA may see (allowed grows with the row).
  const int cta_allowed = allowed_of(min(row0 + kRows, row_end) - 1);
  const int tiles = (cta_allowed + kKeys - 1) / kKeys;

  // The warp's two rows per lane (m16n8k16 fragments: rows g and g + 8), split into fp16 hi/lo
  // after scaling each row by a power of two.
  const int lr[2] = {warp * 16 + g, warp * 16 + g + 8};
  const QT* qb = static_cast<const QT*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
  const int d = p.num_subspaces * p.sub_dim;
  auto qval = [&](int r, int c) -> float {
    const int i = row0 + lr[r];
    return i < row_end && c < d ? to_float(qb[(int64_t)i * p.q_row_stride + c]) : 0.f;
  };
  float amax[2] = {0.f, 0.f};
  bool bad = false;
#pragma unroll
  for (int s = 0; s < T::kSteps; ++s)
#pragma unroll
    for (int e = 0; e < 4; ++e)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float v = qval(r, 16 * s + 2 * t4 + (e & 1) + (e >> 1) * 8);
        amax[r] = fmaxf(amax[r], fabsf(v));
        bad |= !isfinite(v);
      }
  // 16-bit q is exact in fp16 after the power-of-two scaling (up to subnormal rounding, under
  // 2^-25 per element, inside delta's absolute term): only float32 q needs its lo half.
  constexpr bool kSplitQ = std::is_same_v<QT, float>;
  uint32_t ahi[T::kSteps][4], alo[kSplitQ ? T::kSteps : 1][4];
  float scale[2], ss[2] = {0.f, 0.f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    amax[r] = fmaxf(amax[r], __shfl_xor_sync(kFull, amax[r], 1));
    amax[r] = fmaxf(amax[r], __shfl_xor_sync(kFull, amax[r], 2));
    scale[r] = amax[r] > 0.f ? pow2_scale(amax[r]) : 1.f;
  }
#pragma unroll
  for (int s = 0; s < T::kSteps; ++s)
#pragma unroll
    for (int x = 0; x < 4; ++x) {  // register x: row g (even x) or g + 8 (odd), columns +8 for x >= 2
      const int r = x & 1, c = 16 * s + 2 * t4 + (x >> 1) * 8;
      const float v0 = qval(r, c) * scale[r], v1 = qval(r, c + 1) * scale[r];
      __half h0, l0, h1, l1;
      split_half(v0, h0, l0);
      split_half(v1, h1, l1);
      ahi[s][x] = pack_half2(h0, h1);
      if constexpr (kSplitQ) alo[s][x] = pack_half2(l0, l1);
      ss[r] = fmaf(v0, v0, fmaf(v1, v1, ss[r]));
    }
  const bool any_bad = __any_sync(kFull, bad);  // conservatively: the whole warp's rows
  const float key_bound = sqrtf(w.key_norm2[(int64_t)b * H + h]) * (1.f + 1e-5f);  // largest scaled key norm
  int allowed[2];
  float R[2], inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    ss[r] += __shfl_xor_sync(kFull, ss[r], 1);
    ss[r] += __shfl_xor_sync(kFull, ss[r], 2);
    R[r] = sqrtf(ss[r]) * (1.f + 1e-5f) * key_bound;
    allowed[r] = allowed_of(row0 + lr[r]);
    // Rows the scan leaves alone: all allowed keys are taken, or the bound is useless.
    if (allowed[r] <= k || any_bad || !(R[r] > 0.f) || !isfinite(R[r])) allowed[r] = 0, R[r] = 0.f;
    inv[r] = R[r] > 0.f ? (float)kBins / (2.f * R[r]) : 0.f;
    if (t4 == 0) {
      row_r[lr[r]] = R[r];
      row_delta[lr[r]] = ldexpf(R[r], -9) + ldexpf(1.f, -13);
    }
  }
  __syncthreads();  // hist zeroed, row bounds written
  const bool cta_active = __syncthreads_or(allowed[0] > 0 || allowed[1] > 0);

  const __half* khi = w.keys_hi + ((int64_t)b * H + h) * w.keys_pad * kD;
  const __half* klo = w.keys_lo + ((int64_t)b * H + h) * w.keys_pad * kD;
  const uint32_t ring = smem_u32(smem);
  // ldmatrix x4 lane roles: matrix lane / 8 = (n-block of the pair, k chunk of the step).
  const int ld_key = (lane >> 4) * 8 + (lane & 7), ld_chunk = (lane >> 3) & 1;

  // One pass over the CTA's key tiles (every stride-th: tiles 0, stride, 2 stride, ...):
  // score(r, j, s) for each of the lane's rows r (lr[r]) and each key j that row may see.
  auto pass = [&](auto precise_tag, int stride, auto&& score) {
    constexpr bool kPrecise = decltype(precise_tag)::value;
    const int steps = (tiles + stride - 1) / stride;
    auto load = [&](int step, int stage) {
      const uint32_t dst = ring + stage * 2 * T::kTileBytes;
      load_tile<kD>(dst, khi + (int64_t)step * stride * kKeys * kD);
      if (kPrecise) load_tile<kD>(dst + T::kTileBytes, klo + (int64_t)step * stride * kKeys * kD);
    };
#pragma unroll
    for (int st = 0; st < T::kStages - 1; ++st) {
      if (st < steps) load(st, st);
      cp_async_commit();
    }
    for (int i = 0; i < steps; ++i) {
      const int kt = i * stride;
      cp_async_wait<T::kStages - 2>();
      __syncthreads();  // step i landed for everyone; stage (i - 1) % kStages is free
      if (i + T::kStages - 1 < steps) load(i + T::kStages - 1, (i + T::kStages - 1) % T::kStages);
      cp_async_commit();
      const uint32_t hi = ring + (i % T::kStages) * 2 * T::kTileBytes, lo = hi + T::kTileBytes;
      float acc[kKeys / 8][4];
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
      for (int s = 0; s < T::kSteps; ++s)
#pragma unroll
        for (int pr = 0; pr < kKeys / 16; ++pr) {
          const int key = pr * 16 + ld_key, ch = 2 * s + ld_chunk;
          const uint32_t off = key * kD * 2 + ((ch ^ (key & 7)) * 16);
          uint32_t bh[4];
          ldmatrix_x4(bh, hi + off);
          if constexpr (kPrecise) {
            uint32_t bl[4];
            ldmatrix_x4(bl, lo + off);
            if constexpr (kSplitQ) {
              mma_f16(acc[2 * pr], alo[s], bh[0], bh[1]);
              mma_f16(acc[2 * pr + 1], alo[s], bh[2], bh[3]);
            }
            mma_f16(acc[2 * pr], ahi[s], bl[0], bl[1]);
            mma_f16(acc[2 * pr + 1], ahi[s], bl[2], bl[3]);
          }
          mma_f16(acc[2 * pr], ahi[s], bh[0], bh[1]);
          mma_f16(acc[2 * pr + 1], ahi[s], bh[2], bh[3]);
        }
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {  // accumulator e: row g (e < 2) or g + 8, key 2 t4 + (e & 1) of block n
          const int r = e >> 1, j = kt * kKeys + n * 8 + 2 * t4 + (e & 1);
          if (j < allowed[r]) score(r, j, acc[n][e]);
        }
    }
    cp_async_wait<0>();
    __syncthreads();
  };

  if (cta_active) {
    // Pass 1: histograms of s1, over every sample-th key tile.
    pass(std::false_type{}, sample, [&](int r, int, float score) {
      const int bin = hist_bin(score, -R[r], inv[r]);
      atomicAdd(&hist[lr[r] * kHistWords + (bin >> 1)], 1u << ((bin & 1) * 16));
    });
  }
  // Per row: the bar of pass 2 and whether the list should fit. Whole histogram (sample 1): the
  // bin of the k-th largest s1 gives t with at least k keys at s1 >= t, the bar is t - delta, and
  // the histogram bounds the list before pass 2. Sampled: t is the bin where the sample's count
  // reaches its share of (k + slots) / 2 keys, the middle of what a list may hold, and the list's
  // size is only estimated; either way a row is settled only if pass 2 lists between k and slots
  // keys, which makes the result exact for any bar (the k-th best s2 is then >= the bar, so every
  // key at or above it is listed).
  if (tid < kRows) {
    const float r = row_r[tid], delta = row_delta[tid];
    const uint32_t* hr = hist + tid * kHistWords;
    float bar = INFINITY;
    int state = -1;
    const int allowed_row = allowed_of(row0 + tid);
    int sampled = allowed_row;  // keys of the row in the sampled tiles
    if (sample > 1) {
      sampled = 0;
      for (int kt = 0; kt * kKeys < allowed_row; kt += sample) sampled += min(kKeys, allowed_row - kt * kKeys);
    }
    const int want = sample > 1 ? (int)(((int64_t)(k + slots) / 2 * sampled + allowed_row - 1) / max(allowed_row, 1)) : k;
    if (r > 0.f && sampled > 0) {
      const float binv = (float)kBins / (2.f * r);
      int cum = 0, sel = 0;
      for (int bin = kBins - 1; bin >= 0; --bin) {
        const int c = hist_count(hr, bin);
        if (cum + c >= want) {
          sel = bin;
          break;
        }
        cum += c;
      }
      if (sel > 0) {  // bin 0 would take every key below it too: leave such rows to the search
        const float t = -r + (float)sel / binv;
        const int low = hist_bin(t - 2.f * delta, -r, binv);
        int64_t bound = 0;
        for (int bin = kBins - 1; bin >= low; --bin) bound += hist_count(hr, bin);
        if (sample > 1) bound = bound * allowed_row / sampled;  // an estimate: pass 2 checks
        if (bound <= slots) bar = t - delta, state = 0;
      }
    }
    row_thr[tid] = bar;
    counter[tid] = state;
  }
  __syncthreads();
  const float bar[2] = {row_thr[lr[0]], row_thr[lr[1]]};
  const int64_t list0 = ((int64_t)b * H + h) * w.chunk_rows + chunk_row0;  // the CTA's first row's list
  if (__syncthreads_or(bar[0] < INFINITY || bar[1] < INFINITY)) {
    // Pass 2: precise scores; keys at or above the bar join the row's list.
    pass(std::true_type{}, 1, [&](int r, int j, float score) {
      if (score >= bar[r]) {
        const int pos = atomicAdd(&counter[lr[r]], 1);
        if (pos < slots) w.cand[(list0 + lr[r]) * slots + pos] = PqCandidate{score, j};
      }
    });
  }
  __syncthreads();
  if (tid < kRows && row0 + tid < row_end) {
    const int c = counter[tid];
    w.cand_count[list0 + tid] = c >= k && c <= slots ? c : -1;
  }
}

// Pass 1's key-tile stride. ATTNX_PQ_SCAN_SAMPLE: "auto" samples about 32 tiles per row (stride
// Lk / 2048, 1 to 8), a number sets the stride; unset or 1: every tile (the exact histogram).
// Sampling only moves the bar of pass 2; rows whose list ends outside [k, slots] take the exact
// search, so results do not change (2026-12-08: built, not yet measured; docs/perf-notes.md).
int scan_sample_stride(const PqTopkParams& p) {
  const char* env = std::getenv("ATTNX_PQ_SCAN_SAMPLE");
  if (env == nullptr || env[0] == '\0') return 1;
  const int tiles = (p.seqlen_k + kKeys - 1) / kKeys;
  if (std::string(env) == "auto") return std::min(8, std::max(1, tiles / 32));
  return std::min(64, std::max(1, std::atoi(env)));
}

template <int kD, typename QT>
Status launch_scan(const PqTopkParams& p, const PqScanWork& w, int row_begin, cudaStream_t stream) {
  using T = ScanTraits<kD>;
  auto kernel = pq_scan_kernel<kD, QT>;
  static KernelAttributesOnce attributes;
  if (attributes.set(kernel, T::kSmemBytes) != cudaSuccess) return Status::kCudaError;
  const int rows = min(w.chunk_rows, p.seqlen_q - row_begin);
  const dim3 grid((rows + kRows - 1) / kRows, p.num_heads, p.batch);
  kernel<<<grid, kThreads, T::kSmemBytes, stream>>>(p, w, row_begin, scan_sample_stride(p));
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

int64_t align256(int64_t x) { return (x + 255) / 256 * 256; }

}  // namespace

bool pq_scan_applies(const PqTopkParams& p, int slots) {
  const char* env = std::getenv("ATTNX_PQ_SCAN");  // "0": the LUT search alone (A/B and tests)
  if (env != nullptr && env[0] == '0') return false;
  // Short rows are cheap for the LUT kernel; 16-bit bin counts need Lk < 2^16.
  // Head dims above 128 would hold 2 x 64 fp16 fragment registers of q per lane: left to the LUTs.
  return p.seqlen_k >= 4 * slots && p.seqlen_k >= 1024 && p.seqlen_k < 65536 &&
         p.num_subspaces * p.sub_dim <= 128;
}

PqScanWork pq_scan_layout(const PqTopkParams& p, int slots, char* base, int64_t* bytes) {
  PqScanWork w;
  const int d = p.num_subspaces * p.sub_dim;
  w.dim_pad = d <= 64 ? 64 : 128;
  w.keys_pad = (p.seqlen_k + kKeys - 1) / kKeys * kKeys;
  w.slots = slots;
  const int64_t bh = (int64_t)p.batch * p.num_heads;
  const int64_t per_row = bh * ((int64_t)slots * sizeof(PqCandidate) + sizeof(int));
  int64_t fit = std::max<int64_t>(kRows, kChunkBytes / per_row / kRows * kRows);
  const char* env = std::getenv("ATTNX_PQ_SCAN_CHUNK_ROWS");  // tests: several chunks on small inputs
  if (env != nullptr && std::atoi(env) > 0) fit = (std::atoi(env) + kRows - 1) / kRows * kRows;
  const int64_t all = (int64_t)(p.seqlen_q + kRows - 1) / kRows * kRows;
  w.chunk_rows = (int)std::min(fit, all);
  int64_t off = 0;
  auto take = [&](int64_t n) {
    char* at = base == nullptr ? nullptr : base + off;
    off += align256(n);
    return at;
  };
  const int64_t keys = bh * w.keys_pad * w.dim_pad * (int64_t)sizeof(__half);
  w.keys_hi = reinterpret_cast<__half*>(take(keys));
  w.keys_lo = reinterpret_cast<__half*>(take(keys));
  w.key_scale = reinterpret_cast<float*>(take(p.num_heads * (int64_t)sizeof(float)));
  w.key_norm2 = reinterpret_cast<float*>(take(bh * (int64_t)sizeof(float)));
  w.cand = reinterpret_cast<PqCandidate*>(take(bh * w.chunk_rows * slots * (int64_t)sizeof(PqCandidate)));
  w.cand_count = reinterpret_cast<int*>(take(bh * w.chunk_rows * (int64_t)sizeof(int)));
  *bytes = off;
  return w;
}

Status pq_scan_prepare(const PqTopkParams& p, const PqScanWork& w, cudaStream_t stream) {
  pq_head_kernel<<<p.num_heads, 256, 0, stream>>>(p, w);
  if (cudaGetLastError() != cudaSuccess) return Status::kCudaError;
  if (cudaMemsetAsync(w.key_norm2, 0, (int64_t)p.batch * p.num_heads * sizeof(float), stream) != cudaSuccess)
    return Status::kCudaError;
  const int64_t total = (int64_t)p.batch * p.num_heads * w.keys_pad;
  const int blocks = (int)std::min<int64_t>((total + 255) / 256, 132 * 16);
  pq_decode_kernel<<<blocks, 256, 0, stream>>>(p, w);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

Status pq_scan_rows(const PqTopkParams& p, const PqScanWork& w, int row_begin, cudaStream_t stream) {
  return with_q_type(p.q_type, [&](auto qt) {
    using QT = decltype(qt);
    switch (w.dim_pad) {
      case 64: return launch_scan<64, QT>(p, w, row_begin, stream);
      case 128: return launch_scan<128, QT>(p, w, row_begin, stream);
    }
    return Status::kUnsupported;
  });
}

}  // namespace attnx::pq

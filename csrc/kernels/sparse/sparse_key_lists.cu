// Key-major lists of the sparse backward: for each (batch, KV head, key), the queries whose index
// row lists that key, as query ids i * G + h % G (G = Hq / Hk query heads per KV head).
//
// A counting sort over the index tensor: count entries per key (atomics), exclusive prefix sums per
// (batch, KV head), place each entry at its key's next free slot (atomic cursors). The order inside
// a key's list is whatever the atomics produced; the dK/dV kernel does not depend on it (it orders
// each list through a bitmap). Each (batch, KV head) owns a region of Lq * G * topk slots, the most
// it can receive, so regions need no global prefix sum.
//
// The passes walk (batch, KV head) pairs one after the other and query rows in order within one, so
// the counters and the lists' current ends being written (Lk lines per KV head) stay in L2 while
// the stores to them combine. Tried: per-chunk shared-memory histograms (17 chunks per KV head) made
// the fill 1.8x slower: 17 write cursors per key no longer fit L2 (docs/perf-notes.md).
#include <cuda_runtime.h>

#include "sparse_api.h"

namespace attnx::sparse {
namespace {

constexpr int kListThreads = 256;
constexpr int kScanThreads = 1024;

struct ListShape {
  const int* indices;
  int64_t idx_batch_stride, idx_row_stride, idx_head_stride;
  int seqlen_q, seqlen_k, heads_q, heads_k, topk;
};

// Block (query row i, KV head hk, batch b): the row's G * topk entries of that KV head. kFill =
// false counts into count[bh][j]; kFill = true uses count (scanned: absolute positions) as cursors.
template <bool kFill>
__global__ void __launch_bounds__(kListThreads) key_list_pass_kernel(const ListShape s, int* count, int* key_queries) {
  const int i = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int group = s.heads_q / s.heads_k;
  const int64_t bh = int64_t(b) * s.heads_k + hk;
  const int* row = s.indices + b * s.idx_batch_stride + int64_t(i) * s.idx_row_stride;
  for (int e = threadIdx.x; e < group * s.topk; e += kListThreads) {
    const int hl = e / s.topk, t = e - hl * s.topk;
    const int j = __ldg(row + (hk * group + hl) * s.idx_head_stride + t);
    if (static_cast<unsigned>(j) >= static_cast<unsigned>(s.seqlen_k)) continue;  // empty slot (or invalid)
    const int slot = atomicAdd(count + bh * s.seqlen_k + j, 1);
    if (kFill) key_queries[bh * (int64_t(s.seqlen_q) * group * s.topk) + slot] = i * group + hl;
  }
}

__device__ __forceinline__ int warp_inclusive_scan(int x) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const int y = __shfl_up_sync(0xffffffffu, x, off);
    if (lane >= off) x += y;
  }
  return x;
}

// One block per (batch, KV head): count becomes its exclusive prefix sums in place (the fill's
// cursors), key_offset[j] the start of key j's list, key_offset[Lk] the total.
__global__ void __launch_bounds__(kScanThreads) key_offsets_kernel(int* key_count, int* key_offset, int seqlen_k) {
  __shared__ int warp_total[kScanThreads / 32];
  int* count = key_count + int64_t(blockIdx.x) * seqlen_k;
  int* offset = key_offset + int64_t(blockIdx.x) * (seqlen_k + 1);
  const int per = (seqlen_k + kScanThreads - 1) / kScanThreads;
  const int lo = min(seqlen_k, int(threadIdx.x) * per), hi = min(seqlen_k, lo + per);
  int sum = 0;
  for (int j = lo; j < hi; ++j) sum += count[j];
  const int incl = warp_inclusive_scan(sum);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 31) warp_total[warp] = incl;
  __syncthreads();
  if (warp == 0) warp_total[lane] = warp_inclusive_scan(warp_total[lane]);
  __syncthreads();
  int run = incl - sum + (warp > 0 ? warp_total[warp - 1] : 0);
  for (int j = lo; j < hi; ++j) {
    const int c = count[j];
    offset[j] = count[j] = run;
    run += c;
  }
  if (threadIdx.x == kScanThreads - 1) offset[seqlen_k] = run;
}

}  // namespace

Status sparse_build_key_lists(const SparseBwdParams& p, cudaStream_t stream) {
  const SparseBwdWorkspace ws = SparseBwdWorkspace::carve(p);
  const int64_t bh = int64_t(p.batch) * p.num_heads_k;
  if (bh == 0 || p.seqlen_k == 0) return Status::kSuccess;
  if (cudaMemsetAsync(ws.key_count, 0, sizeof(int) * bh * p.seqlen_k, stream) != cudaSuccess)
    return Status::kCudaError;
  const ListShape s{p.indices, p.idx_batch_stride, p.idx_row_stride, p.idx_head_stride,
                    p.seqlen_q, p.seqlen_k, p.num_heads_q, p.num_heads_k, p.topk};
  const bool entries = p.seqlen_q > 0 && p.topk > 0;
  if (entries && (p.batch > 65535 || p.num_heads_k > 65535)) return Status::kInvalidArgument;
  const dim3 grid(p.seqlen_q, p.num_heads_k, p.batch);
  if (entries) key_list_pass_kernel<false><<<grid, kListThreads, 0, stream>>>(s, ws.key_count, nullptr);
  key_offsets_kernel<<<bh, kScanThreads, 0, stream>>>(ws.key_count, ws.key_offset, p.seqlen_k);
  if (entries) key_list_pass_kernel<true><<<grid, kListThreads, 0, stream>>>(s, ws.key_count, ws.key_queries);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace attnx::sparse

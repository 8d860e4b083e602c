// The split-KV plan of the MLA decode, on the GPU: cut the batch's pages, in sequence order, into
// num_parts stretches of equal cost (a piece costs its pages plus a fixed setup share), so a
// skewed batch (one long sequence among short ones) still spreads over every SM.
//
// The walk is sequential and short (one step per piece, a dozen walks for the search); the block
// only loads the lengths in parallel. It must match attnx.reference.mla.mla_decode_metadata_fwd
// step for step: the walk and the search are host-callable, and tests/test_mla.py compiles them
// into a host program and compares its plans with the reference's (no GPU needed).
#include "mla_api.h"

namespace attnx::mla {
namespace {

constexpr int kPageSize = 64;
constexpr int kSplitCost = 1;  // more for a piece of a split sequence: partials stored, read by the combine
constexpr int kThreads = 256;

// One part after another in sequence order; each part but the last spends at most per_part (a
// piece costs fixed_cost + its pages, + kSplitCost unless it is a whole sequence; a piece that
// could not take a page is not started), the last takes the rest. Writes the plan when metadata
// is given; returns the last part's cost.
__host__ __device__ long long walk_parts(const int* pages, int batch, int num_parts, int fixed_cost, long long per_part,
                                int* metadata, int* num_splits) {
  int b = 0, page_pos = 0, slot = 0;
  long long cost = 0;
  if (metadata != nullptr) num_splits[0] = 0;
  for (int part = 0; part < num_parts; ++part) {
    const bool last = part == num_parts - 1;
    int* meta = metadata != nullptr ? metadata + part * kMetaStride : nullptr;
    if (meta != nullptr) meta[kBeginBatch] = b, meta[kBeginToken] = page_pos * kPageSize, meta[kBeginSlot] = slot;
    long long budget = per_part;
    cost = 0;
    while (b < batch && (last || budget > fixed_cost)) {
      const int left = pages[b] - page_pos;
      const int extra = page_pos > 0 || (!last && left + fixed_cost > budget) ? kSplitCost : 0;
      if (!last && budget <= fixed_cost + extra) break;
      budget -= fixed_cost + extra;
      const int take = last ? left : (int)min((long long)left, budget);
      page_pos += take;
      budget -= take;
      cost += fixed_cost + extra + take;
      ++slot;  // one piece of sequence b comes from this part
      if (page_pos >= pages[b]) {
        if (meta != nullptr) num_splits[b + 1] = slot;
        ++b, page_pos = 0;
      }
    }
    if (meta != nullptr) {
      meta[kEndBatch] = b, meta[kEndToken] = page_pos * kPageSize;
      for (int i = kBeginSlot + 1; i < kMetaStride; ++i) meta[i] = 0;
    }
  }
  return cost;
}

// The smallest per-part budget with which the last part is no costlier than the others (the
// plan's cost is its costliest part: a binary search over walks of a few hundred steps), then
// the plan itself. total = the batch's pages + fixed_cost per sequence.
__host__ __device__ void plan_parts(const int* pages, int batch, int num_parts, int fixed_cost, long long total,
                                    int* metadata, int* num_splits) {
  long long lo = (total + num_parts - 1) / num_parts, hi = total + fixed_cost + 1;
  if (lo < fixed_cost + 1) lo = fixed_cost + 1;
  while (lo < hi) {
    const long long mid = (lo + hi) / 2;
    if (walk_parts(pages, batch, num_parts, fixed_cost, mid, nullptr, nullptr) <= mid)
      hi = mid;
    else
      lo = mid + 1;
  }
  walk_parts(pages, batch, num_parts, fixed_cost, lo, metadata, num_splits);
}

__global__ void __launch_bounds__(kThreads) mla_metadata_kernel(const int* cache_seqlens, int batch, int num_parts,
                                                                int fixed_cost, int* metadata, int* num_splits) {
  extern __shared__ int pages[];
  __shared__ unsigned long long block_total;
  if (threadIdx.x == 0) block_total = 0;
  __syncthreads();
  long long total = 0;
  for (int b = threadIdx.x; b < batch; b += kThreads) {
    const int n = max(cache_seqlens[b], 0);
    pages[b] = (n + kPageSize - 1) / kPageSize;
    total += pages[b] + fixed_cost;
  }
  atomicAdd(&block_total, static_cast<unsigned long long>(total));
  __syncthreads();
  if (threadIdx.x == 0) plan_parts(pages, batch, num_parts, fixed_cost, (long long)block_total, metadata, num_splits);
}

}  // namespace

Status mla_decode_metadata(const int* cache_seqlens, int batch, int num_parts, int fixed_cost, int* metadata,
                           int* num_splits, cudaStream_t stream) {
  if (batch < 0 || num_parts <= 0 || fixed_cost < 1) return Status::kInvalidArgument;
  const size_t smem = (size_t)batch * sizeof(int);
  if (smem > 200 * 1024) return Status::kUnsupported;  // the caller plans on the host instead
  if (smem > 48 * 1024 &&
      cudaFuncSetAttribute(mla_metadata_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
    return Status::kCudaError;
  mla_metadata_kernel<<<1, kThreads, smem, stream>>>(cache_seqlens, batch, num_parts, fixed_cost, metadata,
                                                    num_splits);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace attnx::mla

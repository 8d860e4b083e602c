// The split-KV plan of the MLA decode, on the GPU: cut the batch's pages, in sequence order, into
// num_parts stretches of equal cost (a sequence costs its pages plus a fixed setup share), so a
// skewed batch (one long sequence among short ones) still spreads over every SM.
//
// The walk is sequential and short (one step per piece); the block only loads the lengths in
// parallel. It must match attnx.reference.mla.mla_decode_metadata_fwd step for step.
#include "mla_api.h"

namespace attnx::mla {
namespace {

constexpr int kPageSize = 64;
constexpr int kFixedCost = 2;  // pages' worth of per-sequence setup and combine
constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) mla_metadata_kernel(const int* cache_seqlens, int batch, int num_parts,
                                                                int* metadata, int* num_splits) {
  extern __shared__ int pages[];
  __shared__ long long block_total;
  if (threadIdx.x == 0) block_total = 0;
  __syncthreads();
  long long total = 0;
  for (int b = threadIdx.x; b < batch; b += kThreads) {
    const int n = max(cache_seqlens[b], 0);
    pages[b] = (n + kPageSize - 1) / kPageSize;
    total += pages[b] + kFixedCost;
  }
  atomicAdd(reinterpret_cast<unsigned long long*>(&block_total), static_cast<unsigned long long>(total));
  __syncthreads();
  if (threadIdx.x != 0) return;

  const long long per_part = max(1LL, (block_total + num_parts - 1) / num_parts);
  int b = 0, page_pos = 0, slot = 0;
  num_splits[0] = 0;
  for (int part = 0; part < num_parts; ++part) {
    int* meta = metadata + part * kMetaStride;
    meta[kBeginBatch] = b, meta[kBeginToken] = page_pos * kPageSize, meta[kBeginSlot] = slot;
    const bool last = part == num_parts - 1;
    long long budget = per_part;
    while (b < batch && (last || budget > 0)) {
      if (page_pos == 0) budget -= kFixedCost;
      const int left = pages[b] - page_pos;
      const int take = last ? left : (int)min((long long)left, max(1LL, budget));
      page_pos += take;
      budget -= take;
      ++slot;  // one piece of sequence b comes from this part
      if (page_pos >= pages[b]) {
        num_splits[b + 1] = slot;
        ++b, page_pos = 0;
      }
    }
    meta[kEndBatch] = b, meta[kEndToken] = page_pos * kPageSize;
    for (int i = kBeginSlot + 1; i < kMetaStride; ++i) meta[i] = 0;
  }
}

}  // namespace

Status mla_decode_metadata(const int* cache_seqlens, int batch, int num_parts, int* metadata, int* num_splits,
                           cudaStream_t stream) {
  if (batch < 0 || num_parts <= 0) return Status::kInvalidArgument;
  const size_t smem = (size_t)batch * sizeof(int);
  if (smem > 200 * 1024) return Status::kUnsupported;  // the caller plans on the host instead
  if (smem > 48 * 1024 &&
      cudaFuncSetAttribute(mla_metadata_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
    return Status::kCudaError;
  mla_metadata_kernel<<<1, kThreads, smem, stream>>>(cache_seqlens, batch, num_parts, metadata, num_splits);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace attnx::mla

// Two MinHash values per index row (batch b, query i, head h), the key by which the tiled sparse
// forward's query order groups queries whose lists overlap: two lists share a MinHash with
// probability equal to their Jaccard similarity.
//
//   h_a(j) = ((j * a) mod 2^32) >> 1 for a in {0x9E3779B1, 0x85EBCA77};  m_a = min over the row's
//   valid entries (in [0, Lk)), 2^31 - 1 for a row without one;  key = m_1 * 2^31 + m_2,
// written to keys[b][h][i] (int64). The reference (attnx.ops.sparse) computes the same values.
// One warp per row: the row's entries are read once, coalesced.
#include <cuda_runtime.h>

#include "sparse_api.h"

namespace attnx::sparse {
namespace {

constexpr int kMinhashWarps = 8;
constexpr uint32_t kHashA = 0x9E3779B1u, kHashB = 0x85EBCA77u;
constexpr uint32_t kNoKey = 0x7FFFFFFFu;

__global__ void __launch_bounds__(kMinhashWarps * 32) sparse_list_minhash_kernel(const SparseMinhashParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kMinhashWarps + threadIdx.x / 32;  // (b, i, h) flattened
  if (row >= int64_t(p.batch) * p.seqlen_q * p.heads) return;
  const int h = static_cast<int>(row % p.heads);
  const int64_t bi = row / p.heads;
  const int i = static_cast<int>(bi % p.seqlen_q), b = static_cast<int>(bi / p.seqlen_q);
  const int* list = p.indices + b * p.idx_batch_stride + int64_t(i) * p.idx_row_stride + h * p.idx_head_stride;
  uint32_t m1 = kNoKey, m2 = kNoKey;
  for (int e = lane; e < p.topk; e += 32) {
    const int j = __ldg(list + e);
    if (static_cast<unsigned>(j) < static_cast<unsigned>(p.seqlen_k)) {
      m1 = min(m1, (static_cast<uint32_t>(j) * kHashA) >> 1);
      m2 = min(m2, (static_cast<uint32_t>(j) * kHashB) >> 1);
    }
  }
  m1 = __reduce_min_sync(0xffffffffu, m1);
  m2 = __reduce_min_sync(0xffffffffu, m2);
  if (lane == 0) p.keys[(int64_t(b) * p.heads + h) * p.seqlen_q + i] = (static_cast<int64_t>(m1) << 31) | m2;
}

}  // namespace

Status sparse_list_minhash(const SparseMinhashParams& p, cudaStream_t stream) {
  const int64_t rows = int64_t(p.batch) * p.seqlen_q * p.heads;
  if (rows == 0) return Status::kSuccess;
  const int64_t blocks = (rows + kMinhashWarps - 1) / kMinhashWarps;
  if (blocks > 0x7fffffffLL) return Status::kInvalidArgument;
  sparse_list_minhash_kernel<<<static_cast<unsigned>(blocks), kMinhashWarps * 32, 0, stream>>>(p);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace attnx::sparse

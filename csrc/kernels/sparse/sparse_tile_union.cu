// Pre-pass of the tiled sparse forward (sparse_gather_fwd_kernel.cuh): for each tile of 128
// ordered queries (batch b, query head h, tile m of p.query_order), the union of their lists in
// ascending key order and, per chunk of 128 union keys, the 128 x 128 bit mask of which query
// lists which key. Lists may be in any order; entries outside [0, Lk) are empty slots.
//
// One CTA per tile. A bitmap of the Lk keys in shared memory collects the union; an exclusive
// popcount prefix per bitmap word gives each key its rank in the union,
//   rank(j) = prefix[j / 32] + popc(bitmap[j / 32] & bits below j),
// which is its column in the tile: chunk rank / 128, bit rank % 128. Each warp then builds one
// query row's mask at a time in its own buffer (atomicOr of the rank bits of the row's keys) and
// writes it chunk by chunk in the forward's layout [chunk][row][4 words].
#include <cuda_runtime.h>

#include "sparse_api.h"
#include "sparse_gather_tile.cuh"

namespace attnx::sparse {
namespace {

constexpr int kUnionThreads = 256;
constexpr int kUnionWarps = kUnionThreads / 32;

// Bitmap words per map, rounded up to whole chunks (4 words = 128 bits): the row buffers hold
// whole chunks of mask bits, and a union has at most Lk keys.
ATTNX_HOST_DEVICE inline int64_t union_map_words(int seqlen_k) { return (int64_t(seqlen_k) + kGatherTileN - 1) / kGatherTileN * 4; }
// Shared memory of one CTA: the bitmap, its prefix counts and one row buffer per warp.
inline int64_t union_smem_bytes(int seqlen_k) { return 4 * (2 + kUnionWarps) * union_map_words(seqlen_k); }

__device__ __forceinline__ const int* tile_row_list(const SparseFwdParams& p, const GatherTile& tile, int r) {
  return p.indices + tile.b * p.idx_batch_stride + int64_t(tile_query(tile.order, r, p.seqlen_q)) * p.idx_row_stride +
         tile.h * p.idx_head_stride;
}

__device__ __forceinline__ int block_exclusive_scan(int x, int& total) {
  __shared__ int warp_total[kUnionWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int incl = x;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const int y = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += y;
  }
  if (lane == 31) warp_total[warp] = incl;
  __syncthreads();
  int before = 0;
  total = 0;
#pragma unroll
  for (int w = 0; w < kUnionWarps; ++w) {
    before += w < warp ? warp_total[w] : 0;
    total += warp_total[w];
  }
  return before + incl - x;
}

__global__ void __launch_bounds__(kUnionThreads) sparse_tile_union_kernel(const SparseFwdParams p) {
  extern __shared__ uint32_t smem[];
  const int map_words = static_cast<int>(union_map_words(p.seqlen_k));
  uint32_t* bitmap = smem;
  int* prefix = reinterpret_cast<int*>(smem + map_words);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint32_t* row_bits = smem + (2 + warp) * map_words;

  const GatherTile tile(p, SparseGatherWorkspace::carve(p));
  const int rows = tile.rows;

  for (int w = threadIdx.x; w < map_words; w += kUnionThreads) bitmap[w] = 0u;
  __syncthreads();
  for (int r = warp; r < rows; r += kUnionWarps) {
    const int* list = tile_row_list(p, tile, r);
    for (int e = lane; e < p.topk; e += 32) {
      const int j = __ldg(list + e);
      if (static_cast<unsigned>(j) < static_cast<unsigned>(p.seqlen_k)) atomicOr(bitmap + (j >> 5), 1u << (j & 31));
    }
  }
  __syncthreads();

  // Each thread owns a contiguous run of words for the prefix counts.
  const int per = (map_words + kUnionThreads - 1) / kUnionThreads;
  const int w0 = threadIdx.x * per, w1 = min(w0 + per, map_words);
  int run = 0;
  for (int w = w0; w < w1; ++w) run += __popc(bitmap[w]);
  int total;
  run = block_exclusive_scan(run, total);
  for (int w = w0; w < w1; ++w) {
    prefix[w] = run;
    run += __popc(bitmap[w]);
  }
  if (threadIdx.x == 0) *tile.union_count = total;
  __syncthreads();

  int* keys = tile.keys;
  for (int w = threadIdx.x; w < map_words; w += kUnionThreads) {
    int pos = prefix[w];
    for (uint32_t bits = bitmap[w]; bits != 0u; bits &= bits - 1u) keys[pos++] = w * 32 + __ffs(bits) - 1;
  }

  // Rows past the tile's queries get zero masks: the forward reads all 128 rows of a chunk.
  const int used_words = (total + kGatherTileN - 1) / kGatherTileN * 4;
  uint32_t* masks = tile.masks;
  for (int r = warp; r < kGatherTileM; r += kUnionWarps) {
    for (int w = lane; w < used_words; w += 32) row_bits[w] = 0u;
    __syncwarp();
    if (r < rows) {
      const int* list = tile_row_list(p, tile, r);
      for (int e = lane; e < p.topk; e += 32) {
        const int j = __ldg(list + e);
        if (static_cast<unsigned>(j) >= static_cast<unsigned>(p.seqlen_k)) continue;
        const int rank = prefix[j >> 5] + __popc(bitmap[j >> 5] & ((1u << (j & 31)) - 1u));
        atomicOr(row_bits + (rank >> 5), 1u << (rank & 31));
      }
    }
    __syncwarp();
    for (int w = lane; w < used_words; w += 32) masks[(int64_t(w >> 2) * kGatherTileM + r) * 4 + (w & 3)] = row_bits[w];
    __syncwarp();  // row_bits is cleared for the next row
  }
}

}  // namespace

bool sparse_tile_unions_fit(const SparseFwdParams& p) { return union_smem_bytes(p.seqlen_k) <= kGatherUnionSmemLimit; }

Status sparse_build_tile_unions(const SparseFwdParams& p, cudaStream_t stream) {
  if (p.query_order == nullptr || p.gather_workspace == nullptr || !sparse_tile_unions_fit(p))
    return Status::kInvalidArgument;
  const dim3 grid(static_cast<unsigned>(SparseGatherWorkspace::num_m_tiles(p)), p.num_heads_q, p.batch);
  if (grid.x * grid.y * grid.z == 0) return Status::kSuccess;
  const int smem = static_cast<int>(union_smem_bytes(p.seqlen_k));
  if (cudaFuncSetAttribute(sparse_tile_union_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess)
    return Status::kCudaError;
  sparse_tile_union_kernel<<<grid, kUnionThreads, smem, stream>>>(p);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace attnx::sparse

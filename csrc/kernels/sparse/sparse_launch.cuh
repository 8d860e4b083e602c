// Host launchers of the sparse-attention kernels for one (element type, head dim) instance.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include "sparse_api.h"
#include "sparse_bwd_dkdv_kernel.cuh"
#include "sparse_bwd_dq_kernel.cuh"
#include "sparse_fwd_kernel.cuh"
#include "sparse_gather_bwd_kernel.cuh"
#include "sparse_gather_fwd_kernel.cuh"

namespace attnx::sparse {

constexpr int kRowWarps = 8;  // query rows (warps) per block of the forward and dQ kernels

inline bool row_grid(const SparseFwdParams& p, dim3& grid) {
  grid = dim3((p.seqlen_q + kRowWarps - 1) / kRowWarps, p.num_heads_q, p.batch);
  return p.num_heads_q <= 65535 && p.batch <= 65535;
}

// The tiled forward: the pre-pass (unions and masks), then one CTA per tile of 128 ordered queries.
template <class Elem, int D>
Status run_sparse_gather_fwd(const SparseFwdParams& p, cudaStream_t stream) {
  using Traits = typename SparseGatherConfig<Elem, D>::Traits;
  const dim3 grid(static_cast<unsigned>(SparseGatherWorkspace::num_m_tiles(p)), p.num_heads_q, p.batch);
  if (grid.x * grid.y * grid.z == 0) return Status::kSuccess;
  Status st = sparse_build_tile_unions(p, stream);
  if (st != Status::kSuccess) return st;
  auto kernel = sparse_gather_fwd_kernel<Traits>;
  constexpr int kSmem = Traits::kSmemBytes;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem) != cudaSuccess)
    return Status::kCudaError;
  kernel<<<grid, Traits::kNumThreads, kSmem, stream>>>(p);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

// With a query order (and Lk small enough for the pre-pass's shared-memory bitmap) the tiled
// forward, else one warp per query.
template <class Elem, int D>
Status run_sparse_fwd(const SparseFwdParams& p, cudaStream_t stream) {
  dim3 grid;
  if (!row_grid(p, grid)) return Status::kInvalidArgument;
  if (grid.x * grid.y * grid.z == 0) return Status::kSuccess;
  if (p.query_order != nullptr && p.gather_workspace != nullptr && sparse_tile_unions_fit(p))
    return run_sparse_gather_fwd<Elem, D>(p, stream);
  sparse_fwd_kernel<Elem, D, kRowWarps><<<grid, kRowWarps * 32, 0, stream>>>(p);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

// Whether the tiled backward takes a call: a query order and its workspace, head dim 64, and Lk
// within the pre-pass's shared-memory bitmap.
inline bool sparse_gather_bwd_applies(const SparseFwdParams& p) {
  return p.query_order != nullptr && p.gather_workspace != nullptr && p.head_dim == 64 && sparse_tile_unions_fit(p);
}

// The tiled backward: the pre-pass (the forward's tiles again), row statistics, zeroed float32
// dK/dV accumulators, the tiles, the conversion.
template <class Elem, int D>
Status run_sparse_gather_bwd(const SparseBwdParams& p, cudaStream_t stream) {
  if constexpr (D != 64) {
    return Status::kUnsupported;
  } else {
    using Traits = SparseGatherBwdTraits<Elem, D>;
    const SparseGatherBwdWorkspace ws = SparseGatherBwdWorkspace::carve(p);
    const int64_t acc_bytes = 4 * SparseGatherBwdWorkspace::accum_words(p);
    if (acc_bytes > 0 && cudaMemsetAsync(ws.dk_accum, 0, 2 * acc_bytes, stream) != cudaSuccess) return Status::kCudaError;
    const dim3 grid(static_cast<unsigned>(SparseGatherWorkspace::num_m_tiles(p)), p.num_heads_q, p.batch);
    if (grid.x * grid.y * grid.z > 0) {
      Status st = sparse_build_tile_unions(p, stream);
      if (st != Status::kSuccess) return st;
      const int64_t rows = int64_t(p.batch) * p.seqlen_q * p.num_heads_q;
      sparse_gather_bwd_stats_kernel<Elem, D>
          <<<static_cast<unsigned>((rows + 8 * kGroups - 1) / (8 * kGroups)), 256, 0, stream>>>(p, ws.row_stats);
      auto kernel = sparse_gather_bwd_kernel<Traits>;
      constexpr int kSmem = Traits::kSmemBytes;
      if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem) != cudaSuccess)
        return Status::kCudaError;
      kernel<<<grid, Traits::kNumThreads, kSmem, stream>>>(p);
    }
    const int64_t pairs = SparseGatherBwdWorkspace::accum_words(p) / 2;
    if (pairs > 0)
      sparse_gather_bwd_convert_kernel<Elem><<<static_cast<unsigned>((pairs + 255) / 256), 256, 0, stream>>>(
          p, ws.dk_accum, ws.dv_accum);
    return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
  }
}

template <class Elem, int D>
Status run_sparse_bwd(const SparseBwdParams& p, cudaStream_t stream) {
  dim3 grid;
  if (!row_grid(p, grid) || p.num_heads_k > 65535) return Status::kInvalidArgument;
  if (sparse_gather_bwd_applies(p)) return run_sparse_gather_bwd<Elem, D>(p, stream);
  if (int64_t(p.seqlen_q) * (p.num_heads_q / p.num_heads_k) * p.topk >= (int64_t(1) << 31))
    return Status::kInvalidArgument;  // 32-bit list offsets
  const int64_t warp_bytes = 4 * dkdv_warp_smem_words(p);
  constexpr int64_t kSmemBudget = 200 * 1024;
  const int dkdv_warps = static_cast<int>(std::min<int64_t>(8, kSmemBudget / warp_bytes));
  if (dkdv_warps < 1) return Status::kInvalidArgument;  // the query bitmap does not fit shared memory
  const SparseBwdWorkspace ws = SparseBwdWorkspace::carve(p);

  Status st = sparse_build_key_lists(p, stream);
  if (st != Status::kSuccess) return st;
  if (grid.x * grid.y * grid.z > 0)
    sparse_bwd_dq_kernel<Elem, D, kRowWarps><<<grid, kRowWarps * 32, 0, stream>>>(p, ws.row_stats);
  const dim3 kgrid((p.seqlen_k + dkdv_warps - 1) / dkdv_warps, p.num_heads_k, p.batch);
  if (kgrid.x * kgrid.y * kgrid.z > 0) {
    const int smem = static_cast<int>(dkdv_warps * warp_bytes);
    auto kernel = sparse_bwd_dkdv_kernel<Elem, D>;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess)
      return Status::kCudaError;
    const int bitmap_words = static_cast<int>(dkdv_warp_smem_words(p) - kQueryBuffer);
    kernel<<<kgrid, dkdv_warps * 32, smem, stream>>>(p, ws, bitmap_words);
  }
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace attnx::sparse

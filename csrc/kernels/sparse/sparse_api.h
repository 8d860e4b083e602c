// Torch-free entry points of sparse attention (used by the torch bindings).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common/cuda_check.h"
#include "sparse_params.h"

namespace attnx::sparse {

// Forward of the instance matching (dtype, head_dim); kUnsupported if none was built.
Status sparse_fwd(const SparseFwdParams& p, cudaStream_t stream);

// Backward (dq, dk, dv) of the matching instance; p.workspace holds sparse_bwd_workspace_words(p)
// words. kInvalidArgument when the key-major lists would not fit 32-bit offsets or the dK/dV
// kernel's query bitmap (Lq * Hq / Hk bits) would not fit shared memory.
Status sparse_bwd(const SparseBwdParams& p, cudaStream_t stream);

inline int64_t sparse_bwd_workspace_words(const SparseFwdParams& p) { return SparseBwdWorkspace::words(p); }

// Key-major lists of the backward (sparse_key_lists.cu, shared by every instance): fills
// key_count, key_offset and key_queries of the workspace from p.indices.
Status sparse_build_key_lists(const SparseBwdParams& p, cudaStream_t stream);

// Tiled forward (p.query_order set): its workspace, and the pre-pass that fills it
// (sparse_tile_union.cu). The pre-pass keeps a bitmap of the Lk keys and a few buffers of the same
// size in shared memory: sparse_tile_unions_fit says whether Lk allows it (up to about 170K keys);
// sparse_fwd runs the per-query kernel instead where it does not.
constexpr int64_t kGatherUnionSmemLimit = 200 * 1024;
inline int64_t sparse_gather_workspace_words(const SparseFwdParams& p) { return SparseGatherWorkspace::words(p); }
// The tiled backward (head dim 64; p.query_order set): its workspace in p.gather_workspace.
inline int64_t sparse_gather_bwd_workspace_words(const SparseFwdParams& p) { return SparseGatherBwdWorkspace::words(p); }
bool sparse_tile_unions_fit(const SparseFwdParams& p);
Status sparse_build_tile_unions(const SparseFwdParams& p, cudaStream_t stream);

// Two MinHash values of each index row, the sort key of the tiled forward's query order
// (sparse_list_minhash.cu): keys int64 [B, H, Lq] contiguous.
struct SparseMinhashParams {
  const int* indices = nullptr;  // [B, Lq, H, topk], contiguous last dim
  int64_t idx_batch_stride = 0, idx_row_stride = 0, idx_head_stride = 0;
  int batch = 0, seqlen_q = 0, heads = 0, topk = 0, seqlen_k = 0;
  int64_t* keys = nullptr;
};
Status sparse_list_minhash(const SparseMinhashParams& p, cudaStream_t stream);

}  // namespace attnx::sparse

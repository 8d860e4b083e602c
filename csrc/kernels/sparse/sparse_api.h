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

}  // namespace attnx::sparse

// Torch-free entry points of fused neighborhood attention (used by the torch bindings and
// bench/cpp).
#pragma once

#include <cuda_runtime.h>

#include "../common/cuda_check.h"
#include "na_params.h"

namespace attnx::na {

// Runs the forward instance matching (dtype, head_dim); kUnsupported if none was built, or for
// tile shapes or strides the kernel cannot take (the caller then makes q/k/v contiguous or runs
// the reference).
Status na_fwd(const NaFwdParams& params, cudaStream_t stream);

// Backward (dq, dk, dv) of the matching instance; p.workspace must hold na_bwd_workspace_floats(p)
// floats (no initialisation needed). kUnsupported as for the forward (dO too must be a view TMA
// can read: the caller makes it contiguous otherwise).
Status na_bwd(const NaBwdParams& params, cudaStream_t stream);

// Floats of the backward's workspace (float32 dq accumulator, lse and rowsum(dO * O) per query
// row, tile-major); -1 if the given tile shapes are invalid.
int64_t na_bwd_workspace_floats(const NaBwdParams& params);

}  // namespace attnx::na

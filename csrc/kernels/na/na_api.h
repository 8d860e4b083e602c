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

}  // namespace attnx::na

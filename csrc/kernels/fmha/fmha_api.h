// Torch-free entry points of the fused-MHA core (used by the torch bindings and bench/cpp).
#pragma once

#include <cuda_runtime.h>

#include "../common/cuda_check.h"
#include "fmha_params.h"

namespace attnx::fmha {

// Runs the forward instance matching (dtype, head_dim); kUnsupported if none was built.
Status fmha_fwd(const FmhaFwdParams& params, cudaStream_t stream);

// Newline-separated names of the kernel instances compiled into this library
// (e.g. "fmha_fwd_bf16_hdim128").
const char* built_instances();

}  // namespace attnx::fmha

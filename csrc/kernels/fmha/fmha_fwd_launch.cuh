// Host launcher of one forward instance (included by the generated instance files only).
#pragma once

#include <cuda_runtime.h>

#include "../common/cuda_check.h"
#include "fmha_fwd_kernel.cuh"

namespace attnx::fmha {

template <typename Element, int kHeadDim>
Status run_fmha_fwd(const FmhaFwdParams& p, cudaStream_t stream) {
  using Traits = FmhaFwdTraits<Element, kHeadDim>;
  if (p.batch == 0 || p.seqlen_q == 0 || p.num_heads_q == 0) return Status::kSuccess;
  auto kernel = fmha_fwd_kernel<Traits>;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSmemBytes) != cudaSuccess)
    return Status::kCudaError;
  const dim3 grid((p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM, p.num_heads_q, p.batch);
  kernel<<<grid, Traits::kNumThreads, Traits::kSmemBytes, stream>>>(p);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace attnx::fmha

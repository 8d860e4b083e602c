// Grid size of the backward main kernels (dense, packed, block-sparse, neighborhood). The kernels
// loop over work tiles (blockIdx.x, + gridDim.x, ...), carrying their pipelines, K/V buffers and
// dQ hand-off from one tile to the next, so any grid size is correct. One CTA per work tile is the
// default: the hardware block scheduler balances uneven walks (causal, packed, neighborhood
// borders) and keeps in-flight tiles adjacent in L2. A persistent grid with the static round-robin
// the kernels implement measured slower (docs/perf-notes.md, 2026-12-07): causal and packed 20-30%.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "../common/device_sms.h"

namespace attnx::fmha {

// ATTNX_BWD_PERSISTENT: unset or 0, one CTA per work tile; n > 0, at most n CTAs (tests and the
// sanitizer cases cap it so that CTAs walk several tiles); "sms", one CTA per SM (experiments).
inline cudaError_t bwd_persistent_ctas(int64_t num_tiles, int& num_ctas) {
  num_ctas = (int)num_tiles;
  const char* env = std::getenv("ATTNX_BWD_PERSISTENT");
  if (env == nullptr || env[0] == '\0') return cudaSuccess;
  if (std::strcmp(env, "sms") == 0) {
    int num_sms = 0;
    const cudaError_t err = current_device_sms(num_sms);
    if (err == cudaSuccess) num_ctas = (int)std::min<int64_t>(num_tiles, num_sms);
    return err;
  }
  const int64_t cap = std::atoll(env);
  if (cap > 0) num_ctas = (int)std::min<int64_t>(num_tiles, cap);
  return cudaSuccess;
}

}  // namespace attnx::fmha

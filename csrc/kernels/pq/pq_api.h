// Torch-free entry points of the PQ encoding and top-k selection (used by the torch bindings).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common/cuda_check.h"
#include "pq_params.h"

namespace attnx::pq {

// kUnsupported outside the kernel's domain (M not in {4, 8, 16}, C > 256, D > 256, or a k
// whose selection buffer would not fit shared memory: pq_topk_supported says which).
bool pq_topk_supported(const PqTopkParams& p);
// Bytes of p.workspace that pq_topk needs (0 when the call runs without the tensor-core scan).
int64_t pq_topk_workspace_bytes(const PqTopkParams& p);
Status pq_topk(const PqTopkParams& p, cudaStream_t stream);

// kUnsupported outside the kernel's domain (D / M not in {2, 4, 8, 16, 32}, C > 256).
bool pq_encode_supported(const PqEncodeParams& p);
Status pq_encode(const PqEncodeParams& p, cudaStream_t stream);

}  // namespace attnx::pq

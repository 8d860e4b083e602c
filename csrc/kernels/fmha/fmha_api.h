// Torch-free entry points of the fused-MHA core (used by the torch bindings and bench/cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common/cuda_check.h"
#include "fmha_params.h"

namespace attnx::fmha {

// Runs the forward instance matching (dtype, head_dim); kUnsupported if none was built.
Status fmha_fwd(const FmhaFwdParams& params, cudaStream_t stream);

// Backward (dq, dk, dv) of the matching instance. p.workspace must hold
// fmha_bwd_workspace_floats(p) floats (no initialisation needed) and p.ws_rows = fmha_bwd_ws_rows(p).
// Problems with no query or no key rows at all are kUnsupported (the caller returns zeros).
Status fmha_bwd(const FmhaBwdParams& params, cudaStream_t stream);

// Workspace of the backward: rows per head, and floats in all ((head dim + 2) per row and head).
inline int64_t fmha_bwd_ws_rows(const FmhaFwdParams& p) {
  return p.cu_seqlens_q != nullptr ? round_up_rows(p.total_q) + 2 * kBwdBlockM * (int64_t)p.batch
                                   : (int64_t)p.batch * round_up_rows(p.seqlen_q);
}
inline int64_t fmha_bwd_workspace_floats(const FmhaFwdParams& p) {
  return fmha_bwd_ws_rows(p) * p.num_heads_q * (p.head_dim + 2);
}

// Block-sparse backward: ints of p.bs_lists (per (index batch, index head, KV tile) a count and a
// list of backward Q tiles). Index tensors broadcast over batch / heads keep one list set.
inline int64_t fmha_bwd_bs_list_ints(const FmhaFwdParams& p) {
  if (p.kv_block_index == nullptr) return 0;
  const int64_t bi = p.bs_index_batch_stride == 0 ? 1 : p.batch, hi = p.bs_index_head_stride == 0 ? 1 : p.num_heads_q;
  const int64_t kv_tiles = (p.seqlen_k + 127) / 128, m_tiles = round_up_rows(p.seqlen_q) / kBwdBlockM;
  return bi * hi * kv_tiles * (m_tiles + 1);
}

// Newline-separated names of the kernel instances compiled into this library
// (e.g. "fmha_fwd_bf16_hdim128").
const char* built_instances();

}  // namespace attnx::fmha

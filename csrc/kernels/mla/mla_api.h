// Torch-free entry points of the MLA decode (used by the torch bindings).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common/cuda_check.h"
#include "mla_params.h"

namespace attnx::mla {

// Runs the instance matching p.dtype (head dims 576/512, page size 64); kUnsupported if none was
// built. p.tile_scheduler_metadata / p.num_splits come from mla_decode_metadata for the same
// cache_seqlens and num_parts; p.o_accum / p.lse_accum hold mla_workspace_rows(p) rows.
Status mla_decode(const MlaDecodeParams& p, cudaStream_t stream);

// Split parts per (KV head, query block): the SMs shared among those groups.
inline int mla_num_parts(int num_sms, int num_heads_q, int num_heads_k, int q_len) {
  const int group_rows = (num_heads_k > 0 ? num_heads_q / num_heads_k : num_heads_q) * q_len;
  const int blocks = (group_rows > 0 ? (group_rows + 63) / 64 : 1) * (num_heads_k > 0 ? num_heads_k : 1);
  const int parts = num_sms / blocks;
  return parts > 1 ? parts : 1;
}

// A piece's fixed cost in the split plan, in pages' worth of time: its query block load and output
// store (bytes that grow with the block's rows; a 64-row block's are about two pages) plus the
// piece's start and epilogue latency. Measured (2026-12-08, H100, a 32768-token sequence beside
// 127 of 256 against the same tokens spread evenly): 64-row blocks were fastest at 5 (skewed
// 47.9 us, even 46.5; at 2 the skewed batch took 55.8), 16-row blocks at 3 (38.6-38.9 us; 5 cost
// 42). Between those the cost is interpolated in the block's rows.
inline int mla_piece_fixed_cost(int num_heads_q, int num_heads_k, int q_len) {
  const int group_rows = (num_heads_k > 0 ? num_heads_q / num_heads_k : num_heads_q) * q_len;
  const int block_rows = group_rows < 64 ? group_rows : 64;
  return 2 + (3 * block_rows + 32) / 64;
}

// Partial-result rows the decode may write: at most batch + num_parts pieces (each part boundary
// cuts at most one sequence), each with Hk * rows_per_group rows.
inline int64_t mla_workspace_rows(const MlaDecodeParams& p) {
  return ((int64_t)p.batch + p.num_parts) * p.num_heads_k * p.rows_per_group();
}

// The balanced split plan on the GPU (same algorithm as attnx.reference.mla.mla_decode_metadata_fwd):
// metadata int32 [num_parts, kMetaStride], num_splits int32 [batch + 1]; fixed_cost from
// mla_piece_fixed_cost.
Status mla_decode_metadata(const int* cache_seqlens, int batch, int num_parts, int fixed_cost, int* metadata,
                           int* num_splits, cudaStream_t stream);

}  // namespace attnx::mla

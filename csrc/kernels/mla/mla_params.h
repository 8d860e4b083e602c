// Plain parameters of the MLA decode kernels: pointers, strides (in elements), sizes.
//
// Rows: the queries sharing one KV head are flattened as row = s * heads_per_group + h_local
// (s the query token, h_local the head within the group), and cut into 64-row blocks.
#pragma once

#include <cstdint>

#include "../common/host_device.h"
#include "../fmha/fmha_params.h"  // DType

namespace attnx::mla {

using fmha::DType;

// Layout of one tile_scheduler_metadata row (int32 x kMetaStride): the part covers sequence
// positions from (begin_batch, begin_token) up to, not including, (end_batch, end_token); its
// first (sequence, part) piece writes split slot begin_slot, the next ones the following slots.
enum MetaField : int { kBeginBatch = 0, kBeginToken, kEndBatch, kEndToken, kBeginSlot, kMetaStride = 8 };

struct MlaDecodeParams {
  DType dtype = DType::kBFloat16;
  int head_dim = 576;    // keys (latent + rope)
  int head_dim_v = 512;  // values: the first head_dim_v columns of the cache
  int batch = 0, seqlen_q = 0, num_heads_q = 0, num_heads_k = 0;
  int page_size = 64;
  float scale = 0.f;
  bool causal = false;
  // The cache streams through L2 once when one query block covers the KV head's rows: loaded
  // evict-first then (measured: no change either way; the partials stayed in L2 regardless).
  bool kv_evict_first = true;

  const void* q = nullptr;  // [B, s_q, Hq, 576]
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  const void* kv = nullptr;  // [num_pages, 64, Hk, 576], contiguous
  int num_pages = 0;
  const int* block_table = nullptr;  // [B, max_pages]
  int64_t block_table_stride = 0;
  int max_pages = 0;
  const int* cache_seqlens = nullptr;  // [B]

  void* out = nullptr;  // [B, s_q, Hq, 512]
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;
  float* lse = nullptr;  // [B, s_q, Hq], contiguous

  // Split-KV plan (mla_decode_metadata) and the partial results of split sequences:
  // o_accum [num_slots, Hk, rows, 512] in the input dtype and lse_accum [num_slots, Hk, rows] float,
  // rows = s_q * Hq / Hk. A partial O is normalised by its own sum, so it is a convex combination of
  // value rows and always in the input dtype's range; storing it there halves the partials'
  // traffic (written by the decode, read by the combine) at one extra rounding of each partial.
  const int* tile_scheduler_metadata = nullptr;  // [num_parts, kMetaStride]
  const int* num_splits = nullptr;               // [B + 1], prefix sums
  int num_parts = 0;
  void* o_accum = nullptr;
  float* lse_accum = nullptr;

  ATTNX_HOST_DEVICE int rows_per_group() const { return seqlen_q * (num_heads_q / num_heads_k); }
};

}  // namespace attnx::mla

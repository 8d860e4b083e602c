// Plain parameters of the PQ top-k selection (SPT): per query, the k keys with the largest PQ
// inner product score(i, j) = sum_m LUT_i[m][codes[j, m]], LUT_i[m][c] = q_i,m . centroids[m][c].
//
// q [B, Lq, H, D] (fp16/bf16/fp32, contiguous head dim), codes uint8 [B, Lk, H, M] with a
// contiguous last dim (strides in bytes; head-major memory, i.e. row stride M, streams best),
// centroids float32 [H, M, C, D / M] contiguous, out int32 [B, Lq, H, k] contiguous.
#pragma once

#include <cstdint>

namespace attnx::pq {

enum class QType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2 };

struct PqTopkParams {
  QType q_type = QType::kFloat32;
  int batch = 0, seqlen_q = 0, seqlen_k = 0, num_heads = 0;
  int num_subspaces = 0, num_centroids = 0, sub_dim = 0;  // M, C, D / M
  int topk = 0;
  bool causal = false;  // key j allowed for query i iff j <= i + Lk - Lq (bottom-right aligned)
  // true: out[i] in descending score order (ties: lower key index first); false: the same keys
  // in ascending key index order (no sort by score: a selection, then the keys in order).
  bool sorted = true;

  const void* q = nullptr;
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;  // elements
  const uint8_t* codes = nullptr;
  int64_t codes_batch_stride = 0, codes_row_stride = 0, codes_head_stride = 0;  // bytes
  const float* centroids = nullptr;
  int32_t* out = nullptr;

  // Scratch of the tensor-core candidate scan (pq_topk_workspace_bytes(p) bytes, 256-byte
  // aligned); may be null when that size is 0.
  void* workspace = nullptr;
};

// PQ encoding: codes [B, L, H, M] (uint8, contiguous) of x [B, L, H, D] (fp16/bf16/fp32, contiguous
// head dim) against centroids float32 [H, M, C, D / M] contiguous.
struct PqEncodeParams {
  QType x_type = QType::kFloat32;
  int batch = 0, seqlen = 0, num_heads = 0;
  int num_subspaces = 0, num_centroids = 0, sub_dim = 0;  // M, C, D / M
  const void* x = nullptr;
  int64_t x_batch_stride = 0, x_row_stride = 0, x_head_stride = 0;  // elements
  const float* centroids = nullptr;
  uint8_t* codes = nullptr;
};

// One selection candidate: its score and key index.
struct PqCandidate {
  float score;
  int32_t idx;
};

}  // namespace attnx::pq

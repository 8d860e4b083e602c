// Plain parameters of the sparse-attention kernels (each query attends to the keys listed for it):
// pointers, strides (in elements), sizes.
//
// q/out [B, Lq, Hq, D], k/v [B, Lk, Hk, D] (any batch/row/head strides, contiguous head dim),
// indices int32 [B, Lq, Hq, topk] with a contiguous last dim (-1 = empty slot; any value outside
// [0, Lk) is treated as empty, so no index can make a kernel read out of bounds), lse float32
// [B, Lq, Hq] contiguous. Query head h reads KV head h / (Hq / Hk).
#pragma once

#include <vector_types.h>  // float2

#include <cstdint>

#include "../fmha/fmha_params.h"  // DType

namespace attnx::sparse {

using fmha::DType;

struct SparseFwdParams {
  DType dtype = DType::kBFloat16;
  int head_dim = 0;
  int batch = 0, seqlen_q = 0, seqlen_k = 0, num_heads_q = 0, num_heads_k = 0;
  int topk = 0;       // slots per query row of `indices`
  float scale = 0.f;  // softmax scale (natural units)

  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  const int* indices = nullptr;
  int64_t idx_batch_stride = 0, idx_row_stride = 0, idx_head_stride = 0;

  void* out = nullptr;
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;
  float* lse = nullptr;  // natural log; -inf for a row without a valid key
};

// The backward adds dO, dlse and the gradients, and a workspace (sparse_bwd_workspace_words) for
// the key-major lists: per (batch, KV head) the queries that list each key, which the dK/dV
// kernel walks in query order so the gradients are deterministic.
struct SparseBwdParams : SparseFwdParams {
  const void* dout = nullptr;
  int64_t do_batch_stride = 0, do_row_stride = 0, do_head_stride = 0;
  const float* dlse = nullptr;  // [B, Lq, Hq] contiguous, or nullptr
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  int64_t dq_batch_stride = 0, dq_row_stride = 0, dq_head_stride = 0;
  int64_t dk_batch_stride = 0, dk_row_stride = 0, dk_head_stride = 0;
  int64_t dv_batch_stride = 0, dv_row_stride = 0, dv_head_stride = 0;
  void* workspace = nullptr;  // sparse_bwd_workspace_words(p) 4-byte words, no initialisation needed
};

// Layout of the backward workspace (4-byte words): the regions below, in this order.
struct SparseBwdWorkspace {
  int* key_count;    // [B * Hk, Lk]: entries per key, then the fill cursors
  int* key_offset;   // [B * Hk, Lk + 1]: exclusive prefix sums of key_count
  int* key_queries;  // [B * Hk, Lq * G * topk]: query ids (i * G + h % G) of each key's list
  float2* row_stats;  // [B, Lq, Hq]: {lse * log2(e), rowsum(dO * O) - dlse}, one 8-byte load per row

  // Words before row_stats, rounded up to even: float2 loads need 8-byte alignment.
  static int64_t stats_offset(const SparseFwdParams& p) {
    const int64_t bh = int64_t(p.batch) * p.num_heads_k;
    const int64_t w = bh * p.seqlen_k + bh * (p.seqlen_k + 1) + int64_t(p.batch) * p.seqlen_q * p.num_heads_q * p.topk;
    return w + (w % 2);
  }
  static int64_t words(const SparseFwdParams& p) {
    return stats_offset(p) + 2 * int64_t(p.batch) * p.seqlen_q * p.num_heads_q;
  }
  static SparseBwdWorkspace carve(const SparseBwdParams& p) {
    const int64_t bh = int64_t(p.batch) * p.num_heads_k;
    SparseBwdWorkspace w;
    w.key_count = static_cast<int*>(p.workspace);
    w.key_offset = w.key_count + bh * p.seqlen_k;
    w.key_queries = w.key_offset + bh * (p.seqlen_k + 1);
    w.row_stats = reinterpret_cast<float2*>(static_cast<int*>(p.workspace) + stats_offset(p));
    return w;
  }
};

}  // namespace attnx::sparse

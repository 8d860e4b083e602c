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

#include "../common/host_device.h"
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

  // Tiled kernels (sparse_gather_*), taken when query_order is set: int32 [B, Hq, Lq]
  // contiguous, a permutation of each (batch, head)'s query rows that puts queries with similar
  // lists next to each other (lists in any order). gather_workspace holds
  // SparseGatherWorkspace::words(p) 4-byte words for the forward, SparseGatherBwdWorkspace::words(p)
  // for the backward (no initialisation needed).
  const int* query_order = nullptr;
  void* gather_workspace = nullptr;
};

// The tiled kernels run 128 ordered queries per CTA against the union of their lists, in chunks
// of 128 union keys; a pre-pass (sparse_tile_union.cu) writes, per Q tile, the union in key order,
// its size and, per chunk, a 128 x 128 bit mask of which query lists which key.
constexpr int kGatherTileM = 128;  // queries per tile (one producer thread per query row)
constexpr int kGatherTileN = 128;  // union keys per chunk (one producer thread per key row)

// Layout of the tiled forward's workspace (4-byte words): per Q tile (batch, head, m) a capacity
// of max_chunks(p) chunks, so no host sync is needed to size it.
struct SparseGatherWorkspace {
  int* union_count;  // [tiles]: keys in the tile's union
  int* union_keys;   // [tiles, max_chunks * 128]: the union in ascending key order
  uint32_t* masks;   // [tiles, max_chunks, 128 rows, 4 words]: bit c of row r: query r lists key c

  ATTNX_HOST_DEVICE static int64_t num_m_tiles(const SparseFwdParams& p) {
    return (int64_t(p.seqlen_q) + kGatherTileM - 1) / kGatherTileM;
  }
  ATTNX_HOST_DEVICE static int64_t num_tiles(const SparseFwdParams& p) {
    return num_m_tiles(p) * p.num_heads_q * p.batch;
  }
  // A union holds at most min(Lk, 128 * topk) keys.
  ATTNX_HOST_DEVICE static int64_t max_chunks(const SparseFwdParams& p) {
    const int64_t cap = int64_t(p.seqlen_k) < int64_t(kGatherTileM) * p.topk ? int64_t(p.seqlen_k)
                                                                            : int64_t(kGatherTileM) * p.topk;
    return (cap + kGatherTileN - 1) / kGatherTileN;
  }
  // The counts take a multiple of 4 words: the masks are read as 16-byte vectors.
  ATTNX_HOST_DEVICE static int64_t count_words(const SparseFwdParams& p) { return (num_tiles(p) + 3) / 4 * 4; }
  ATTNX_HOST_DEVICE static int64_t words(const SparseFwdParams& p) {
    const int64_t t = num_tiles(p), c = max_chunks(p);
    return count_words(p) + t * c * kGatherTileN + t * c * kGatherTileM * 4;
  }
  ATTNX_HOST_DEVICE static SparseGatherWorkspace carve(const SparseFwdParams& p) {
    const int64_t t = num_tiles(p), c = max_chunks(p);
    SparseGatherWorkspace w;
    w.union_count = static_cast<int*>(p.gather_workspace);
    w.union_keys = w.union_count + count_words(p);
    w.masks = reinterpret_cast<uint32_t*>(w.union_keys + t * c * kGatherTileN);
    return w;
  }
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

// The tiled backward's workspace (4-byte words): the forward's tile unions and masks (rebuilt by
// the same pre-pass), each query row's {lse * log2(e) (+inf for a row without keys), rowsum(dO * O)
// - dlse}, and float32 dK / dV accumulators [B, Lk, Hk, D] that the tiles add into.
struct SparseGatherBwdWorkspace {
  SparseGatherWorkspace tiles;
  float2* row_stats;  // [B, Lq, Hq]
  float* dk_accum;    // [B, Lk, Hk, D], unscaled
  float* dv_accum;

  ATTNX_HOST_DEVICE static int64_t stats_offset(const SparseFwdParams& p) {
    return (SparseGatherWorkspace::words(p) + 3) / 4 * 4;
  }
  ATTNX_HOST_DEVICE static int64_t accum_offset(const SparseFwdParams& p) {
    return stats_offset(p) + (2 * int64_t(p.batch) * p.seqlen_q * p.num_heads_q + 3) / 4 * 4;
  }
  ATTNX_HOST_DEVICE static int64_t accum_words(const SparseFwdParams& p) {
    return int64_t(p.batch) * p.seqlen_k * p.num_heads_k * p.head_dim;
  }
  ATTNX_HOST_DEVICE static int64_t words(const SparseFwdParams& p) { return accum_offset(p) + 2 * accum_words(p); }
  ATTNX_HOST_DEVICE static SparseGatherBwdWorkspace carve(const SparseFwdParams& p) {
    SparseGatherBwdWorkspace w;
    w.tiles = SparseGatherWorkspace::carve(p);
    int* base = static_cast<int*>(p.gather_workspace);
    w.row_stats = reinterpret_cast<float2*>(base + stats_offset(p));
    w.dk_accum = reinterpret_cast<float*>(base + accum_offset(p));
    w.dv_accum = w.dk_accum + accum_words(p);
    return w;
  }
};

}  // namespace attnx::sparse

// Plain parameters of the fused-MHA core: pointers, strides (in elements) and sizes.
//
// Dense layout is tokens-then-heads, [B, L, H, D], with any batch/row/head strides and a
// contiguous head dim. Packed (varlen) layout is [T, H, D] with cu_seqlens: sequence b owns rows
// cu_seqlens[b] .. cu_seqlens[b+1]-1 and batch strides are unused. lse is float32 and contiguous:
// [B, Lq, Hq] dense, [Tq, Hq] packed.
#pragma once

#include <cstdint>

namespace attnx::fmha {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1 };

struct FmhaFwdParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;

  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;

  int batch = 0;
  int seqlen_q = 0;  // dense: the length; packed: the longest sequence (sizes the grid)
  int seqlen_k = 0;
  int num_heads_q = 0;
  int num_heads_k = 0;  // num_heads_q % num_heads_k == 0 (GQA/MQA)
  int head_dim = 0;

  // Packed sequences: int32 [batch + 1] each, or nullptr for the dense layout.
  const int* cu_seqlens_q = nullptr;
  const int* cu_seqlens_k = nullptr;
  int total_q = 0;  // packed rows of q / k (cu_seqlens[batch])
  int total_k = 0;

  float scale = 0.f;  // softmax scale (natural units)
  // Visible keys of query i, with offset = seqlen_k - seqlen_q of its sequence (bottom-right
  // alignment, as in flash-attn): i + offset - window_left <= j <= i + offset + window_right;
  // a negative bound is unbounded. Causal is window_right = 0.
  bool causal = false;
  int window_left = -1;
  int window_right = -1;
  DType dtype = DType::kBFloat16;

  // Block-sparse attention (dense layout, no causal or window): Q tile t of (batch b, head h)
  // visits the KV tiles kv_block_index[b, h, t, :kv_block_count[b, h, t]] (int32, the list
  // contiguous; a batch or head stride of 0 broadcasts) instead of a range. The tiles are the
  // kernel's own: bs_q_block must be its kBlockM and bs_kv_block its kBlockN.
  const int* kv_block_index = nullptr;
  const int* kv_block_count = nullptr;
  int64_t bs_index_batch_stride = 0, bs_index_head_stride = 0, bs_index_tile_stride = 0;
  int64_t bs_count_batch_stride = 0, bs_count_head_stride = 0, bs_count_tile_stride = 0;
  int bs_max_count = 0;
  int bs_q_block = 0, bs_kv_block = 0;

  // Forward only: an int32 zeroed before the call selects the persistent grid, whose CTAs take
  // work tiles from it (DynamicTileScheduler); nullptr: one CTA per work tile.
  int* tile_counter = nullptr;
};

}  // namespace attnx::fmha

namespace attnx::fmha {

// Q tile of the backward, which is also the row padding of its workspace (fmha_bwd_prepost.cuh).
constexpr int kBwdBlockM = 64;
constexpr int64_t round_up_rows(int64_t x) { return (x + kBwdBlockM - 1) / kBwdBlockM * kBwdBlockM; }

// Backward: the forward's fields describe q, k, v, out (= O) and lse; these add dO, the optional
// gradient of lse, the gradients, and a float32 workspace (see fmha_bwd_workspace_floats).
struct FmhaBwdParams : FmhaFwdParams {
  const void* dout = nullptr;
  int64_t do_batch_stride = 0, do_row_stride = 0, do_head_stride = 0;
  const float* dlse = nullptr;  // layout of lse, or nullptr
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  int64_t dq_batch_stride = 0, dq_row_stride = 0, dq_head_stride = 0;
  int64_t dk_batch_stride = 0, dk_row_stride = 0, dk_head_stride = 0;
  int64_t dv_batch_stride = 0, dv_row_stride = 0, dv_head_stride = 0;
  float* workspace = nullptr;
  int64_t ws_rows = 0;  // rows per head of the workspace arrays
  // Block-sparse backward (kv_block_index set; dense layout): fmha_bwd turns the forward's lists
  // (KV tiles per forward Q tile) into lists of the backward's 64-row Q tiles per KV tile, in this
  // int32 workspace of fmha_bwd_bs_list_ints(p) (block_sparse_bwd.cuh).
  int* bs_lists = nullptr;
};

}  // namespace attnx::fmha

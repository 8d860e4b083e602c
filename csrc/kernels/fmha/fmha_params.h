// Plain parameters of the fused-MHA core: pointers, strides (in elements) and sizes.
// Layout is tokens-then-heads, [B, L, H, D], with any batch/row/head strides and a
// contiguous head dim. lse is float32 [B, Lq, Hq] (contiguous).
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
  int seqlen_q = 0;
  int seqlen_k = 0;
  int num_heads_q = 0;
  int num_heads_k = 0;  // num_heads_q % num_heads_k == 0 (GQA/MQA)
  int head_dim = 0;

  float scale = 0.f;    // softmax scale (natural units)
  bool causal = false;  // bottom-right aligned: key j visible to query i iff j <= i + seqlen_k - seqlen_q
  DType dtype = DType::kBFloat16;
};

}  // namespace attnx::fmha

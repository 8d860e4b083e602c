// Plain parameters of fused neighborhood attention: pointers, strides (in elements) and sizes.
//
// Layout [B, *spatial, H, D] with 1 to 3 spatial axes, any strides with a contiguous head dim.
// Lower ranks are padded at the front to three axes of extent 1, so one kernel serves every rank
// (axis 2 is the innermost spatial axis). lse is float32 and contiguous: [B, *spatial, Hq].
#pragma once

#include <cstdint>

#include "../fmha/fmha_params.h"

namespace attnx::na {

using fmha::DType;
constexpr int kAxes = 3;

struct NaFwdParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;

  int64_t q_batch_stride = 0, q_axis_stride[kAxes] = {}, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_axis_stride[kAxes] = {}, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_axis_stride[kAxes] = {}, v_head_stride = 0;
  int64_t o_batch_stride = 0, o_axis_stride[kAxes] = {}, o_head_stride = 0;

  int batch = 0;
  int num_heads_q = 0;
  int num_heads_k = 0;  // num_heads_q % num_heads_k == 0
  int head_dim = 0;
  int extent[kAxes] = {1, 1, 1};  // spatial axis lengths, shared by q, k and v

  // NATTEN's window per axis (na_window.cuh); dilation 1 (dilated axes run the reference).
  int kernel_size[kAxes] = {1, 1, 1};
  int stride[kAxes] = {1, 1, 1};
  bool causal[kAxes] = {false, false, false};

  // Multi-dimensional tiles, tokens per axis (powers of two whose product is the kernel's
  // kBlockM / kBlockN). All zeros: the launcher picks the tiles that visit the fewest KV tiles.
  int q_tile[kAxes] = {0, 0, 0};
  int kv_tile[kAxes] = {0, 0, 0};

  float scale = 0.f;  // softmax scale (natural units)
  DType dtype = DType::kBFloat16;
};

}  // namespace attnx::na

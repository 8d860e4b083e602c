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

  // Forward only: an int32 zeroed before the call selects the persistent grid with the dynamic
  // tile scheduler (fmha/dynamic_tile_scheduler.cuh); nullptr: one CTA per work tile.
  int* tile_counter = nullptr;
};

// Backward: the forward's fields describe q, k, v, out (= O) and lse; these add dO, the optional
// gradient of lse, the gradients and a float32 workspace of na_bwd_workspace_floats(p) floats
// (na_api.h; no initialisation needed). The backward's tiles are kv_tile (128 tokens, the CTA's
// keys) and q_tile (64 tokens, the walked queries); all zeros: the fewest visited tile pairs.
struct NaBwdParams : NaFwdParams {
  const void* dout = nullptr;
  int64_t do_batch_stride = 0, do_axis_stride[kAxes] = {}, do_head_stride = 0;
  const float* dlse = nullptr;  // layout of lse, or nullptr
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  int64_t dq_batch_stride = 0, dq_axis_stride[kAxes] = {}, dq_head_stride = 0;
  int64_t dk_batch_stride = 0, dk_axis_stride[kAxes] = {}, dk_head_stride = 0;
  int64_t dv_batch_stride = 0, dv_axis_stride[kAxes] = {}, dv_head_stride = 0;
  float* workspace = nullptr;
};

}  // namespace attnx::na

// Helpers shared by the fused-MHA bindings (forward and backward): input checks common to the
// dense and packed layouts, parameter filling from tensors, the current stream.
#pragma once

#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <tuple>
#include <utility>

#include "checks.h"
#include "common/device_sms.h"
#include "fmha/fmha_api.h"

namespace attnx::binding {

inline void* current_stream(const char* op, const Tensor& t) {
  void* stream = nullptr;
  STD_TORCH_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream) == AOTI_TORCH_SUCCESS, op,
                  ": could not get the current CUDA stream");
  return stream;
}

// SM count of t's device (the launchers' cached query). Callers hold a DeviceGuard for that
// device, so it is the current one.
inline int num_sms(const Tensor& t) {
  int sms = 0;
  STD_TORCH_CHECK(t.get_device_index() >= 0 && current_device_sms(sms) == cudaSuccess,
                  "attnx: could not query the device's SM count");
  return sms;
}

// Forward kernels with a persistent grid take their work tiles from an int32 counter zeroed
// before the call (stream-ordered). The dynamic grid pays where walks are uneven and short
// (block-sparse lists, NA windows: +5-10% measured) and not on dense ones (long, even walks:
// nothing to balance; head dim 64 lost 5%), so `uneven_walk` picks it by default;
// ATTNX_FWD_PERSISTENT=1 forces it for every forward, =0 turns it off (docs/perf-notes.md).
// `holder` keeps the counter alive through the launch.
inline int* fwd_tile_counter(const Tensor& like, std::optional<Tensor>& holder, bool uneven_walk) {
  static const int forced = [] {
    const char* e = std::getenv("ATTNX_FWD_PERSISTENT");
    return e == nullptr || (e[0] != '0' && e[0] != '1') ? -1 : e[0] - '0';
  }();
  if (forced == 0 || (forced < 0 && !uneven_walk)) return nullptr;
  holder = torch::stable::new_empty(like, {1}, torch::headeronly::ScalarType::Int);
  torch::stable::zero_(*holder);
  return static_cast<int*>(holder->data_ptr());
}

// After a launch: a failure (kUnsupported is each op's own message, checked before) names the op
// and the CUDA error.
inline void check_launched(const char* op, Status status) {
  STD_TORCH_CHECK(status == Status::kSuccess, op, ": kernel launch failed: ", status_string(status), " (",
                  cudaGetErrorString(cudaGetLastError()), ")");
}

// Checks shared by the dense and packed layouts (rank = 4 dense, 3 packed; dims from the end).
inline void check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, int64_t rank) {
  check_cuda_16bit(op, "q", q, rank);
  check_cuda_16bit(op, "k", k, rank);
  check_cuda_16bit(op, "v", v, rank);
  STD_TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
                  ": arguments 'k' and 'v' must have the dtype of 'q'");
  STD_TORCH_CHECK(k.get_device_index() == q.get_device_index() && v.get_device_index() == q.get_device_index(), op,
                  ": arguments 'q', 'k', 'v' must be on one device");
  const int64_t D = q.size(rank - 1), Hq = q.size(rank - 2), Hk = k.size(rank - 2);
  STD_TORCH_CHECK(k.size(rank - 1) == D, op, ": argument 'k' has head dim ", k.size(rank - 1), "; expected ", D,
                  " (that of 'q')");
  STD_TORCH_CHECK(v.size(rank - 3) == k.size(rank - 3) && v.size(rank - 2) == Hk, op, ": argument 'v' has shape ",
                  shape_str(v), "; its rows and heads must match 'k' ", shape_str(k));
  STD_TORCH_CHECK(v.size(rank - 1) == D, op, ": argument 'v' has head dim ", v.size(rank - 1),
                  "; the native kernel needs Dv == D (", D, "); the Python API runs the reference for it");
  STD_TORCH_CHECK(Hk > 0 && Hq % Hk == 0, op, ": argument 'k' has ", Hk, " heads; allowed: a divisor of ", Hq,
                  " (the heads of 'q')");
  STD_TORCH_CHECK(q.size(rank - 3) < (1LL << 31) && k.size(rank - 3) < (1LL << 31), op,
                  ": sequence lengths must be below 2^31");
  check_16b_aligned(op, "q", q);
  check_16b_aligned(op, "k", k);
  check_16b_aligned(op, "v", v);
}

// Backward: dO is loaded by TMA: a view it cannot describe (e.g. an expanded gradient) is made contiguous.
inline Tensor tma_ready(const Tensor& t) {
  bool ok = t.stride(t.dim() - 1) == 1 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t i = 0; i + 1 < t.dim(); ++i) ok = ok && (t.size(i) <= 1 || t.stride(i) % 8 == 0);
  return ok ? t : torch::stable::contiguous(t);
}

// Backward: a tensor that must have the shape (and device) of another.
inline void check_like(const char* op, const char* arg, const Tensor& t, const Tensor& ref, const char* ref_name) {
  STD_TORCH_CHECK(t.dim() == ref.dim(), op, ": argument '", arg, "' has shape ", shape_str(t), "; expected ",
                  shape_str(ref), " (that of '", ref_name, "')");
  for (int64_t i = 0; i < t.dim(); ++i)
    STD_TORCH_CHECK(t.size(i) == ref.size(i), op, ": argument '", arg, "' has shape ", shape_str(t), "; expected ",
                    shape_str(ref), " (that of '", ref_name, "')");
  STD_TORCH_CHECK(t.is_cuda() && t.get_device_index() == ref.get_device_index(), op, ": argument '", arg,
                  "' must be on the device of '", ref_name, "'");
}

// Backward: out and dout shaped like q with q's dtype; lse float32, shaped like q without its head
// dim, on q's device (the kernels index it by query row).
inline void check_backward_tensors(const char* op, const Tensor& q, const Tensor& out, const Tensor& dout,
                                   const Tensor& lse) {
  check_like(op, "out", out, q, "q");
  check_like(op, "dout", dout, q, "q");
  STD_TORCH_CHECK(out.scalar_type() == q.scalar_type() && dout.scalar_type() == q.scalar_type(), op,
                  ": arguments 'out' and 'dout' must have the dtype of 'q'");
  STD_TORCH_CHECK(lse.scalar_type() == ScalarType::Float, op, ": argument 'lse' must be float32");
  STD_TORCH_CHECK(lse.dim() == q.dim() - 1 && sizes(lse) == sizes(q, 1), op, ": argument 'lse' has shape ",
                  shape_str(lse), "; expected q's shape without its head dim");
  STD_TORCH_CHECK(lse.is_cuda() && lse.get_device_index() == q.get_device_index(), op,
                  ": argument 'lse' must be on the device of 'q'");
}

// Backward: dq, dk, dv allocated like q, k, v.
inline std::tuple<Tensor, Tensor, Tensor> new_grads(const Tensor& q, const Tensor& k, const Tensor& v) {
  return {torch::stable::new_empty(q, sizes(q)), torch::stable::new_empty(k, sizes(k)),
          torch::stable::new_empty(v, sizes(v))};
}

// Backward: the optional lse gradient, float32 and shaped like lse, made contiguous.
inline std::optional<Tensor> checked_dlse(const char* op, const std::optional<Tensor>& dlse, const Tensor& lse) {
  if (!dlse.has_value()) return std::nullopt;
  STD_TORCH_CHECK(dlse->scalar_type() == ScalarType::Float, op, ": argument 'dlse' must be float32");
  check_like(op, "dlse", *dlse, lse, "lse");
  return torch::stable::contiguous(*dlse);
}

// Block-sparse index tensors (forward and backward): int32 kv_block_index [B|1, H|1, Tq, M] and
// kv_block_count [B|1, H|1, Tq] on q's device.
inline void check_block_sparse_index(const char* op, const Tensor& q, const Tensor& k, const Tensor& kv_block_index,
                                     const Tensor& kv_block_count, int64_t q_block, int64_t kv_block) {
  const int64_t B = q.size(0), Lq = q.size(1), Hq = q.size(2);
  STD_TORCH_CHECK(k.size(0) == B, op, ": argument 'k' has shape ", shape_str(k), "; its batch must match 'q' ",
                  shape_str(q));
  STD_TORCH_CHECK(q_block > 0 && kv_block > 0, op, ": q_block and kv_block must be positive");
  const int64_t num_q_tiles = (Lq + q_block - 1) / q_block;
  for (auto [name, t, rank] : {std::tuple<const char*, const Tensor*, int64_t>{"kv_block_index", &kv_block_index, 4},
                               std::tuple<const char*, const Tensor*, int64_t>{"kv_block_count", &kv_block_count, 3}}) {
    STD_TORCH_CHECK(t->is_cuda() && t->get_device_index() == q.get_device_index() &&
                        t->scalar_type() == ScalarType::Int && t->dim() == rank,
                    op, ": argument '", name, "' must be an int32 tensor of rank ", rank, " on the device of 'q'");
    STD_TORCH_CHECK((t->size(0) == 1 || t->size(0) == B) && (t->size(1) == 1 || t->size(1) == Hq) &&
                        t->size(2) == num_q_tiles,
                    op, ": argument '", name, "' has shape ", shape_str(*t), "; expected [B|1, H|1, ", num_q_tiles,
                    ", ...]");
  }
  STD_TORCH_CHECK(kv_block_count.size(0) == kv_block_index.size(0) && kv_block_count.size(1) == kv_block_index.size(1),
                  op, ": argument 'kv_block_count' must have the first three dims of 'kv_block_index'");
  STD_TORCH_CHECK(kv_block_index.size(3) <= 1 || kv_block_index.stride(3) == 1, op,
                  ": argument 'kv_block_index' needs a contiguous last dimension");
}

// The bs_* fields of p from checked index tensors (a batch or head dim of 1 broadcasts: stride 0).
inline void set_block_sparse(fmha::FmhaFwdParams& p, const Tensor& kv_block_index, const Tensor& kv_block_count,
                             int64_t q_block, int64_t kv_block) {
  p.kv_block_index = static_cast<const int*>(kv_block_index.data_ptr());
  p.kv_block_count = static_cast<const int*>(kv_block_count.data_ptr());
  auto bstride = [](const Tensor& t, int d) { return t.size(d) == 1 ? int64_t(0) : t.stride(d); };
  p.bs_index_batch_stride = bstride(kv_block_index, 0), p.bs_index_head_stride = bstride(kv_block_index, 1);
  p.bs_index_tile_stride = kv_block_index.stride(2);
  p.bs_count_batch_stride = bstride(kv_block_count, 0), p.bs_count_head_stride = bstride(kv_block_count, 1);
  p.bs_count_tile_stride = kv_block_count.stride(2);
  p.bs_max_count = kv_block_index.size(3) == 0 ? 0 : static_cast<int>(kv_block_index.size(3));
  p.bs_q_block = static_cast<int>(q_block), p.bs_kv_block = static_cast<int>(kv_block);
}

inline fmha::FmhaFwdParams make_params(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                const Tensor& lse, std::optional<double> scale) {
  const int64_t r = q.dim();  // strides from the end: [B,] L, H, D
  fmha::FmhaFwdParams p;
  p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = static_cast<float*>(lse.data_ptr());
  p.q_row_stride = q.stride(r - 3), p.q_head_stride = q.stride(r - 2);
  p.k_row_stride = k.stride(r - 3), p.k_head_stride = k.stride(r - 2);
  p.v_row_stride = v.stride(r - 3), p.v_head_stride = v.stride(r - 2);
  p.o_row_stride = out.stride(r - 3), p.o_head_stride = out.stride(r - 2);
  if (r == 4) {
    p.q_batch_stride = q.stride(0), p.k_batch_stride = k.stride(0), p.v_batch_stride = v.stride(0);
    p.o_batch_stride = out.stride(0);
  }
  p.num_heads_q = static_cast<int>(q.size(r - 2)), p.num_heads_k = static_cast<int>(k.size(r - 2));
  p.head_dim = static_cast<int>(q.size(r - 1));
  p.scale = static_cast<float>(scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(p.head_dim)));
  p.dtype = q.scalar_type() == ScalarType::Half ? fmha::DType::kFloat16 : fmha::DType::kBFloat16;
  return p;
}


// cu_seqlens: int32 [B + 1] on q's device (values are the Python API's business; the kernels
// clamp every sequence to the packed tensors).
inline void check_cu_seqlens(const char* kOp, const Tensor& cu_seqlens_q, const Tensor& cu_seqlens_k, const Tensor& q,
                             int64_t max_seqlen_q, int64_t max_seqlen_k) {
  for (auto [name, cu] : {std::pair<const char*, const Tensor*>{"cu_seqlens_q", &cu_seqlens_q},
                          std::pair<const char*, const Tensor*>{"cu_seqlens_k", &cu_seqlens_k}}) {
    STD_TORCH_CHECK(cu->is_cuda() && cu->get_device_index() == q.get_device_index(), kOp, ": argument '", name,
                    "' must be on the device of 'q'");
    STD_TORCH_CHECK(cu->scalar_type() == ScalarType::Int && cu->dim() == 1 && cu->size(0) >= 1 &&
                        (cu->size(0) == 1 || cu->stride(0) == 1),
                    kOp, ": argument '", name, "' must be a contiguous int32 tensor [B + 1]; got shape ",
                    shape_str(*cu));
  }
  STD_TORCH_CHECK(cu_seqlens_k.size(0) == cu_seqlens_q.size(0), kOp, ": argument 'cu_seqlens_k' has ",
                  cu_seqlens_k.size(0), " entries; expected ", cu_seqlens_q.size(0), " (as cu_seqlens_q)");
  STD_TORCH_CHECK(max_seqlen_q >= 0 && max_seqlen_q < (1LL << 31) && max_seqlen_k >= 0 && max_seqlen_k < (1LL << 31),
                  kOp, ": max_seqlen_q / max_seqlen_k must be in [0, 2^31)");
}

}  // namespace attnx::binding

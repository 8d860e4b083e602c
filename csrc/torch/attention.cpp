// Stable-ABI bindings of the fused-MHA forward: CUDA kernels for the attnx::attention and
// attnx::varlen_attention schemas (defined in python/attnx/ops/attention.py).
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cmath>
#include <optional>
#include <algorithm>
#include <tuple>
#include <utility>

#include "checks.h"
#include "fmha/fmha_api.h"

namespace attnx::binding {
namespace {

void* current_stream(const char* op, const Tensor& t) {
  void* stream = nullptr;
  STD_TORCH_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream) == AOTI_TORCH_SUCCESS, op,
                  ": could not get the current CUDA stream");
  return stream;
}

// Checks shared by the dense and packed layouts (rank = 4 dense, 3 packed; dims from the end).
void check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, int64_t rank) {
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

fmha::FmhaFwdParams make_params(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
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

void run(const char* op, const fmha::FmhaFwdParams& p, const Tensor& q) {
  const Status status = fmha::fmha_fwd(p, static_cast<cudaStream_t>(current_stream(op, q)));
  STD_TORCH_CHECK(status != Status::kUnsupported, op, ": no native kernel for head dim ", p.head_dim,
                  " and this dtype (built: ", fmha::built_instances(), "); the Python API runs the reference for it");
  STD_TORCH_CHECK(status == Status::kSuccess, op, ": kernel launch failed: ", status_string(status), " (",
                  cudaGetErrorString(cudaGetLastError()), ")");
}

std::tuple<Tensor, Tensor> attention_cuda(Tensor q, Tensor k, Tensor v, bool causal, std::optional<double> scale) {
  constexpr const char* kOp = "attnx::attention";
  check_qkv(kOp, q, k, v, 4);
  const int64_t B = q.size(0), Lq = q.size(1), Hq = q.size(2), D = q.size(3);
  STD_TORCH_CHECK(k.size(0) == B && v.size(0) == B, kOp, ": argument 'k' has shape ", shape_str(k),
                  "; its batch must match 'q' ", shape_str(q));
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  Tensor out = torch::stable::new_empty(q, {B, Lq, Hq, D});
  Tensor lse = torch::stable::new_empty(q, {B, Lq, Hq}, torch::headeronly::ScalarType::Float);
  fmha::FmhaFwdParams p = make_params(q, k, v, out, lse, scale);
  p.batch = static_cast<int>(B), p.seqlen_q = static_cast<int>(Lq), p.seqlen_k = static_cast<int>(k.size(1));
  p.causal = causal;
  run(kOp, p, q);
  return {out, lse};
}

// cu_seqlens values are validated by the Python API (attnx.varlen_attention); the kernel clamps
// every sequence to the packed tensors, so malformed values can never reach out of bounds.
std::tuple<Tensor, Tensor> varlen_attention_cuda(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q,
                                                 Tensor cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
                                                 bool causal, int64_t window_left, int64_t window_right,
                                                 std::optional<double> scale) {
  constexpr const char* kOp = "attnx::varlen_attention";
  check_qkv(kOp, q, k, v, 3);
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
  const int64_t Tq = q.size(0), Hq = q.size(1), D = q.size(2);
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  Tensor out = torch::stable::new_empty(q, {Tq, Hq, D});
  Tensor lse = torch::stable::new_empty(q, {Tq, Hq}, torch::headeronly::ScalarType::Float);
  fmha::FmhaFwdParams p = make_params(q, k, v, out, lse, scale);
  p.batch = static_cast<int>(cu_seqlens_q.size(0) - 1);
  p.cu_seqlens_q = static_cast<const int*>(cu_seqlens_q.data_ptr());
  p.cu_seqlens_k = static_cast<const int*>(cu_seqlens_k.data_ptr());
  p.total_q = static_cast<int>(Tq), p.total_k = static_cast<int>(k.size(0));
  p.seqlen_q = static_cast<int>(max_seqlen_q), p.seqlen_k = static_cast<int>(max_seqlen_k);
  p.causal = causal;
  p.window_left = static_cast<int>(window_left < 0 ? -1 : std::min<int64_t>(window_left, 1LL << 30));
  p.window_right = static_cast<int>(window_right < 0 ? -1 : std::min<int64_t>(window_right, 1LL << 30));
  run(kOp, p, q);
  return {out, lse};
}

std::string native_instances() { return fmha::built_instances(); }

}  // namespace
}  // namespace attnx::binding

STABLE_TORCH_LIBRARY_FRAGMENT(attnx, m) { m.def("_native_instances() -> str"); }

STABLE_TORCH_LIBRARY_IMPL(attnx, CompositeExplicitAutograd, m) {
  m.impl("_native_instances", TORCH_BOX(&attnx::binding::native_instances));
}

STABLE_TORCH_LIBRARY_IMPL(attnx, CUDA, m) {
  m.impl("attention", TORCH_BOX(&attnx::binding::attention_cuda));
  m.impl("varlen_attention", TORCH_BOX(&attnx::binding::varlen_attention_cuda));
}

// Stable-ABI binding of the dense fused-MHA forward: CUDA kernel for the attnx::attention schema
// (defined in python/attnx/ops/attention.py).
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "checks.h"
#include "fmha/fmha_api.h"

namespace attnx::binding {
namespace {

constexpr const char* kOp = "attnx::attention";

std::tuple<Tensor, Tensor> attention_cuda(Tensor q, Tensor k, Tensor v, bool causal, std::optional<double> scale) {
  check_cuda_16bit(kOp, "q", q, 4);
  check_cuda_16bit(kOp, "k", k, 4);
  check_cuda_16bit(kOp, "v", v, 4);
  STD_TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), kOp,
                  ": arguments 'k' and 'v' must have the dtype of 'q'");
  STD_TORCH_CHECK(k.get_device_index() == q.get_device_index() && v.get_device_index() == q.get_device_index(), kOp,
                  ": arguments 'q', 'k', 'v' must be on one device");
  const int64_t B = q.size(0), Lq = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t Lk = k.size(1), Hk = k.size(2);
  STD_TORCH_CHECK(k.size(0) == B && v.size(0) == B, kOp, ": argument 'k' has shape ", shape_str(k),
                  "; its batch must match 'q' ", shape_str(q));
  STD_TORCH_CHECK(k.size(3) == D, kOp, ": argument 'k' has head dim ", k.size(3), "; expected ", D, " (that of 'q')");
  STD_TORCH_CHECK(v.size(1) == Lk && v.size(2) == Hk, kOp, ": argument 'v' has shape ", shape_str(v),
                  "; expected [B, Lk, Hk, Dv] matching 'k' ", shape_str(k));
  STD_TORCH_CHECK(v.size(3) == D, kOp, ": argument 'v' has head dim ", v.size(3),
                  "; the native kernel needs Dv == D (", D, "); attnx.attention runs the reference for it");
  STD_TORCH_CHECK(Hk > 0 && Hq % Hk == 0, kOp, ": argument 'k' has ", Hk, " heads; allowed: a divisor of ", Hq,
                  " (the heads of 'q')");
  STD_TORCH_CHECK(Lq < (1LL << 31) && Lk < (1LL << 31), kOp, ": sequence lengths must be below 2^31");
  check_16b_aligned(kOp, "q", q);
  check_16b_aligned(kOp, "k", k);
  check_16b_aligned(kOp, "v", v);

  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  Tensor out = torch::stable::new_empty(q, {B, Lq, Hq, D});
  Tensor lse = torch::stable::new_empty(q, {B, Lq, Hq}, torch::headeronly::ScalarType::Float);

  fmha::FmhaFwdParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = static_cast<float*>(lse.data_ptr());
  p.q_batch_stride = q.stride(0), p.q_row_stride = q.stride(1), p.q_head_stride = q.stride(2);
  p.k_batch_stride = k.stride(0), p.k_row_stride = k.stride(1), p.k_head_stride = k.stride(2);
  p.v_batch_stride = v.stride(0), p.v_row_stride = v.stride(1), p.v_head_stride = v.stride(2);
  p.o_batch_stride = out.stride(0), p.o_row_stride = out.stride(1), p.o_head_stride = out.stride(2);
  p.batch = static_cast<int>(B), p.seqlen_q = static_cast<int>(Lq), p.seqlen_k = static_cast<int>(Lk);
  p.num_heads_q = static_cast<int>(Hq), p.num_heads_k = static_cast<int>(Hk), p.head_dim = static_cast<int>(D);
  p.scale = static_cast<float>(scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(D)));
  p.causal = causal;
  p.dtype = q.scalar_type() == ScalarType::Half ? fmha::DType::kFloat16 : fmha::DType::kBFloat16;

  void* stream = nullptr;
  STD_TORCH_CHECK(aoti_torch_get_current_cuda_stream(q.get_device_index(), &stream) == AOTI_TORCH_SUCCESS, kOp,
                  ": could not get the current CUDA stream");
  const Status status = fmha::fmha_fwd(p, static_cast<cudaStream_t>(stream));
  STD_TORCH_CHECK(status != Status::kUnsupported, kOp, ": no native kernel for head dim ", D, " and this dtype (built: ",
                  fmha::built_instances(), "); attnx.attention runs the reference for it");
  STD_TORCH_CHECK(status == Status::kSuccess, kOp, ": kernel launch failed: ", status_string(status), " (",
                  cudaGetErrorString(cudaGetLastError()), ")");
  return {out, lse};
}

std::string native_instances() { return fmha::built_instances(); }

}  // namespace
}  // namespace attnx::binding

STABLE_TORCH_LIBRARY_FRAGMENT(attnx, m) { m.def("_native_instances() -> str"); }

STABLE_TORCH_LIBRARY_IMPL(attnx, CompositeExplicitAutograd, m) {
  m.impl("_native_instances", TORCH_BOX(&attnx::binding::native_instances));
}

STABLE_TORCH_LIBRARY_IMPL(attnx, CUDA, m) { m.impl("attention", TORCH_BOX(&attnx::binding::attention_cuda)); }

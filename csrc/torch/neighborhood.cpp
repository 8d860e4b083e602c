// Stable-ABI binding of fused neighborhood attention: the CUDA kernel of the
// attnx::neighborhood_attention schema (defined in python/attnx/ops/neighborhood.py).
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cmath>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "checks.h"
#include "fmha_binding.h"
#include "na/na_api.h"

namespace attnx::binding {
namespace {

constexpr const char* kOp = "attnx::neighborhood_attention";

std::string list_str(const std::vector<int64_t>& v) {
  std::string s = "(";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + ")";
}

// One value per spatial axis (the Python API expands scalars); padded at the front to three.
template <typename T>
void per_axis(const char* arg, const std::vector<T>& given, int64_t rank, T pad, T (&out)[na::kAxes]) {
  STD_TORCH_CHECK((int64_t)given.size() == rank, kOp, ": argument '", arg, "' has ", given.size(),
                  " entries; expected one per spatial axis (", rank, ")");
  for (int a = 0; a < na::kAxes; ++a) out[a] = a < na::kAxes - rank ? pad : given[a - (na::kAxes - rank)];
}

std::tuple<Tensor, Tensor> neighborhood_attention_cuda(Tensor q, Tensor k, Tensor v, std::vector<int64_t> kernel_size,
                                                       std::vector<int64_t> dilation, std::vector<int64_t> stride,
                                                       std::vector<bool> is_causal, std::optional<double> scale) {
  const int64_t r = q.dim(), rank = r - 3;
  STD_TORCH_CHECK(rank >= 1 && rank <= 3, kOp, ": argument 'q' has shape ", shape_str(q),
                  "; expected [B, *spatial, H, D] with 1 to 3 spatial axes");
  check_qkv(kOp, q, k, v, r);  // dtypes, device, head dims, GQA heads, TMA alignment
  for (int64_t i = 0; i < r - 2; ++i)
    STD_TORCH_CHECK(k.size(i) == q.size(i) && v.size(i) == q.size(i), kOp, ": arguments 'k' ", shape_str(k),
                    " and 'v' ", shape_str(v), " must match 'q' ", shape_str(q), " in batch and spatial extents");
  const int64_t Hq = q.size(r - 2), Hk = k.size(r - 2), D = q.size(r - 1);
  for (int64_t d : dilation)
    STD_TORCH_CHECK(d == 1, kOp, ": dilation ", list_str(dilation),
                    " has no native kernel yet (dilation 1 only); the Python API runs the reference for it");

  na::NaFwdParams p;
  int64_t ks[na::kAxes], st[na::kAxes];
  bool ca[na::kAxes];
  per_axis("kernel_size", kernel_size, rank, int64_t(1), ks);
  per_axis("stride", stride, rank, int64_t(1), st);
  per_axis("is_causal", is_causal, rank, false, ca);
  for (int a = 0; a < na::kAxes; ++a) {
    const int64_t n = a < na::kAxes - rank ? 1 : q.size(1 + a - (na::kAxes - rank));
    STD_TORCH_CHECK(n < (1LL << 31), kOp, ": spatial extents must be below 2^31");
    STD_TORCH_CHECK(ks[a] >= 1 && ks[a] <= n, kOp, ": kernel_size ", list_str(kernel_size),
                    " must be in [1, axis length] on every axis (spatial ", shape_str(q), ")");
    STD_TORCH_CHECK(st[a] >= 1 && st[a] <= ks[a], kOp, ": stride ", list_str(stride),
                    " must be in [1, kernel_size] on every axis");
    p.extent[a] = static_cast<int>(n), p.kernel_size[a] = static_cast<int>(ks[a]);
    p.stride[a] = static_cast<int>(st[a]), p.causal[a] = ca[a];
  }

  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  std::vector<int64_t> out_shape(q.dim()), lse_shape(q.dim() - 1);
  for (int64_t i = 0; i < r; ++i) out_shape[i] = q.size(i);
  for (int64_t i = 0; i + 1 < r; ++i) lse_shape[i] = q.size(i);
  Tensor out = torch::stable::new_empty(q, out_shape);
  Tensor lse = torch::stable::new_empty(q, lse_shape, torch::headeronly::ScalarType::Float);

  auto strides = [&](const Tensor& t, int64_t& batch, int64_t (&axis)[na::kAxes], int64_t& head) {
    batch = t.stride(0), head = t.stride(r - 2);
    for (int a = 0; a < na::kAxes; ++a) axis[a] = a < na::kAxes - rank ? 0 : t.stride(1 + a - (na::kAxes - rank));
  };
  p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr(), p.out = out.data_ptr();
  p.lse = static_cast<float*>(lse.data_ptr());
  strides(q, p.q_batch_stride, p.q_axis_stride, p.q_head_stride);
  strides(k, p.k_batch_stride, p.k_axis_stride, p.k_head_stride);
  strides(v, p.v_batch_stride, p.v_axis_stride, p.v_head_stride);
  strides(out, p.o_batch_stride, p.o_axis_stride, p.o_head_stride);
  p.batch = static_cast<int>(q.size(0));
  p.num_heads_q = static_cast<int>(Hq), p.num_heads_k = static_cast<int>(Hk), p.head_dim = static_cast<int>(D);
  p.scale = static_cast<float>(scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(D)));
  p.dtype = q.scalar_type() == ScalarType::Half ? fmha::DType::kFloat16 : fmha::DType::kBFloat16;

  const Status status = na::na_fwd(p, static_cast<cudaStream_t>(current_stream(kOp, q)));
  STD_TORCH_CHECK(status != Status::kUnsupported, kOp, ": no native kernel for head dim ", D,
                  " with this dtype and layout (built: ", fmha::built_instances(),
                  "; q/k/v need batch strides equal to axis-0 extent x axis-0 stride, as contiguous tensors "
                  "have); the Python API runs the reference or makes the tensors contiguous");
  check_launched(kOp, status);
  return {out, lse};
}

}  // namespace
}  // namespace attnx::binding

STABLE_TORCH_LIBRARY_IMPL(attnx, CUDA, m) {
  m.impl("neighborhood_attention", TORCH_BOX(&attnx::binding::neighborhood_attention_cuda));
}

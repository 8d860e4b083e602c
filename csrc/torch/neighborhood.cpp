// Stable-ABI bindings of fused neighborhood attention: the CUDA kernels of the
// attnx::neighborhood_attention and attnx::neighborhood_attention_backward schemas (defined in
// python/attnx/ops/neighborhood.py). Autograd reaches the backward after a native forward.
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
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
void per_axis(const char* op, const char* arg, const std::vector<T>& given, int64_t rank, T pad,
              T (&out)[na::kAxes]) {
  STD_TORCH_CHECK((int64_t)given.size() == rank, op, ": argument '", arg, "' has ", given.size(),
                  " entries; expected one per spatial axis (", rank, ")");
  for (int a = 0; a < na::kAxes; ++a) out[a] = a < na::kAxes - rank ? pad : given[a - (na::kAxes - rank)];
}

// Checks q, k, v and the window arguments; fills the sizes, windows, scale and dtype (the
// callers fill pointers and strides).
na::NaFwdParams na_geometry(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                            const std::vector<int64_t>& kernel_size, const std::vector<int64_t>& dilation,
                            const std::vector<int64_t>& stride, const std::vector<bool>& is_causal,
                            std::optional<double> scale) {
  const int64_t r = q.dim(), rank = r - 3;
  STD_TORCH_CHECK(rank >= 1 && rank <= 3, op, ": argument 'q' has shape ", shape_str(q),
                  "; expected [B, *spatial, H, D] with 1 to 3 spatial axes");
  check_qkv(op, q, k, v, r);  // dtypes, device, head dims, GQA heads, TMA alignment
  for (int64_t i = 0; i < r - 2; ++i)
    STD_TORCH_CHECK(k.size(i) == q.size(i) && v.size(i) == q.size(i), op, ": arguments 'k' ", shape_str(k),
                    " and 'v' ", shape_str(v), " must match 'q' ", shape_str(q), " in batch and spatial extents");
  for (int64_t d : dilation)
    STD_TORCH_CHECK(d == 1, op, ": dilation ", list_str(dilation),
                    " has no native kernel yet (dilation 1 only); the Python API runs the reference for it");

  na::NaFwdParams p;
  int64_t ks[na::kAxes], st[na::kAxes];
  bool ca[na::kAxes];
  per_axis(op, "kernel_size", kernel_size, rank, int64_t(1), ks);
  per_axis(op, "stride", stride, rank, int64_t(1), st);
  per_axis(op, "is_causal", is_causal, rank, false, ca);
  for (int a = 0; a < na::kAxes; ++a) {
    const int64_t n = a < na::kAxes - rank ? 1 : q.size(1 + a - (na::kAxes - rank));
    STD_TORCH_CHECK(n < (1LL << 31), op, ": spatial extents must be below 2^31");
    STD_TORCH_CHECK(ks[a] >= 1 && ks[a] <= n, op, ": kernel_size ", list_str(kernel_size),
                    " must be in [1, axis length] on every axis (spatial ", shape_str(q), ")");
    STD_TORCH_CHECK(st[a] >= 1 && st[a] <= ks[a], op, ": stride ", list_str(stride),
                    " must be in [1, kernel_size] on every axis");
    p.extent[a] = static_cast<int>(n), p.kernel_size[a] = static_cast<int>(ks[a]);
    p.stride[a] = static_cast<int>(st[a]), p.causal[a] = ca[a];
  }
  p.batch = static_cast<int>(q.size(0));
  p.num_heads_q = static_cast<int>(q.size(r - 2)), p.num_heads_k = static_cast<int>(k.size(r - 2));
  p.head_dim = static_cast<int>(q.size(r - 1));
  p.scale = static_cast<float>(scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(p.head_dim)));
  p.dtype = q.scalar_type() == ScalarType::Half ? fmha::DType::kFloat16 : fmha::DType::kBFloat16;
  return p;
}

// Strides of [B, *spatial, H, D], the spatial ones padded at the front to three axes.
void na_strides(const Tensor& t, int64_t& batch, int64_t (&axis)[na::kAxes], int64_t& head) {
  const int64_t r = t.dim(), rank = r - 3;
  batch = t.stride(0), head = t.stride(r - 2);
  for (int a = 0; a < na::kAxes; ++a) axis[a] = a < na::kAxes - rank ? 0 : t.stride(1 + a - (na::kAxes - rank));
}

std::tuple<Tensor, Tensor> neighborhood_attention_cuda(Tensor q, Tensor k, Tensor v, std::vector<int64_t> kernel_size,
                                                       std::vector<int64_t> dilation, std::vector<int64_t> stride,
                                                       std::vector<bool> is_causal, std::optional<double> scale) {
  na::NaFwdParams p = na_geometry(kOp, q, k, v, kernel_size, dilation, stride, is_causal, scale);
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  Tensor out = torch::stable::new_empty(q, sizes(q));
  Tensor lse = torch::stable::new_empty(q, sizes(q, 1), torch::headeronly::ScalarType::Float);

  p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr(), p.out = out.data_ptr();
  p.lse = static_cast<float*>(lse.data_ptr());
  na_strides(q, p.q_batch_stride, p.q_axis_stride, p.q_head_stride);
  na_strides(k, p.k_batch_stride, p.k_axis_stride, p.k_head_stride);
  na_strides(v, p.v_batch_stride, p.v_axis_stride, p.v_head_stride);
  na_strides(out, p.o_batch_stride, p.o_axis_stride, p.o_head_stride);

  std::optional<Tensor> counter;
  p.tile_counter = fwd_tile_counter(q, counter, /*uneven_walk=*/true);
  const Status status = na::na_fwd(p, static_cast<cudaStream_t>(current_stream(kOp, q)));
  STD_TORCH_CHECK(status != Status::kUnsupported, kOp, ": no native kernel for head dim ", p.head_dim,
                  " with this dtype and layout (built: ", fmha::built_instances(),
                  "; q/k/v need batch strides equal to axis-0 extent x axis-0 stride, as contiguous tensors "
                  "have); the Python API runs the reference or makes the tensors contiguous");
  check_launched(kOp, status);
  return {out, lse};
}

// dO arrives from autograd in any layout: keep it when the 5-D TMA view can read it in place
// (16-byte aligned, batch stride = axis-0 extent x axis-0 stride), else copy it contiguous.
Tensor na_tma_ready(const Tensor& t) {
  Tensor u = tma_ready(t);
  const bool chains = u.size(0) <= 1 || u.size(1) <= 1 || u.stride(0) == u.size(1) * u.stride(1);
  return chains ? u : torch::stable::contiguous(u);
}

std::tuple<Tensor, Tensor, Tensor> neighborhood_attention_backward_cuda(
    Tensor dout, std::optional<Tensor> dlse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,
    std::vector<int64_t> kernel_size, std::vector<int64_t> dilation, std::vector<int64_t> stride,
    std::vector<bool> is_causal, std::optional<double> scale) {
  constexpr const char* kBwdOp = "attnx::neighborhood_attention_backward";
  na::NaBwdParams p;
  static_cast<na::NaFwdParams&>(p) = na_geometry(kBwdOp, q, k, v, kernel_size, dilation, stride, is_causal, scale);
  check_backward_tensors(kBwdOp, q, out, dout, lse);
  STD_TORCH_CHECK(out.stride(out.dim() - 1) == 1, kBwdOp, ": argument 'out' needs a contiguous last dimension");
  dout = na_tma_ready(dout);
  lse = torch::stable::contiguous(lse);
  const std::optional<Tensor> dlse_c = checked_dlse(kBwdOp, dlse, lse);
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  auto [dq, dk, dv] = new_grads(q, k, v);

  p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr(), p.out = out.data_ptr();
  p.lse = static_cast<float*>(lse.data_ptr());
  p.dout = dout.data_ptr();
  p.dlse = dlse_c.has_value() ? static_cast<const float*>(dlse_c->data_ptr()) : nullptr;
  p.dq = dq.data_ptr(), p.dk = dk.data_ptr(), p.dv = dv.data_ptr();
  na_strides(q, p.q_batch_stride, p.q_axis_stride, p.q_head_stride);
  na_strides(k, p.k_batch_stride, p.k_axis_stride, p.k_head_stride);
  na_strides(v, p.v_batch_stride, p.v_axis_stride, p.v_head_stride);
  na_strides(out, p.o_batch_stride, p.o_axis_stride, p.o_head_stride);
  na_strides(dout, p.do_batch_stride, p.do_axis_stride, p.do_head_stride);
  na_strides(dq, p.dq_batch_stride, p.dq_axis_stride, p.dq_head_stride);
  na_strides(dk, p.dk_batch_stride, p.dk_axis_stride, p.dk_head_stride);
  na_strides(dv, p.dv_batch_stride, p.dv_axis_stride, p.dv_head_stride);
  const int64_t floats = na::na_bwd_workspace_floats(p);
  STD_TORCH_CHECK(floats >= 0, kBwdOp, ": no tile shape of the native backward fits spatial ", shape_str(q));
  Tensor workspace = torch::stable::new_empty(q, {std::max<int64_t>(floats, 1)}, ScalarType::Float);
  p.workspace = static_cast<float*>(workspace.data_ptr());

  const Status status = na::na_bwd(p, static_cast<cudaStream_t>(current_stream(kBwdOp, q)));
  STD_TORCH_CHECK(status != Status::kUnsupported, kBwdOp, ": no native backward for head dim ", p.head_dim,
                  " with this dtype and layout (built: ", fmha::built_instances(), ")");
  check_launched(kBwdOp, status);
  return {dq, dk, dv};
}

}  // namespace
}  // namespace attnx::binding

STABLE_TORCH_LIBRARY_IMPL(attnx, CUDA, m) {
  m.impl("neighborhood_attention", TORCH_BOX(&attnx::binding::neighborhood_attention_cuda));
  m.impl("neighborhood_attention_backward", TORCH_BOX(&attnx::binding::neighborhood_attention_backward_cuda));
}

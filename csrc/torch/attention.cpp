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
#include "fmha_binding.h"
#include "fmha/fmha_api.h"

namespace attnx::binding {
namespace {

void run(const char* op, fmha::FmhaFwdParams p, const Tensor& q) {
  std::optional<Tensor> counter;
  p.tile_counter = fwd_tile_counter(q, counter, /*uneven_walk=*/p.kv_block_index != nullptr);
  const Status status = fmha::fmha_fwd(p, static_cast<cudaStream_t>(current_stream(op, q)));
  STD_TORCH_CHECK(status != Status::kUnsupported, op, ": no native kernel for head dim ", p.head_dim,
                  ", this dtype and these options (built: ", fmha::built_instances(),
                  "; block-sparse tiles must be the kernel's: q_block 128 (192 at head dim 64), kv_block 128); "
                  "the Python API runs the reference for it");
  check_launched(op, status);
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
  check_cu_seqlens(kOp, cu_seqlens_q, cu_seqlens_k, q, max_seqlen_q, max_seqlen_k);
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

// Block-sparse attention (block_sparse_attention): the dense forward walking listed KV tiles. Tile
// ids and counts are the Python API's business (checked there once per index tensor); the kernel
// clamps them, so malformed values can never reach out of bounds.
std::tuple<Tensor, Tensor> block_sparse_attention_cuda(Tensor q, Tensor k, Tensor v, Tensor kv_block_index,
                                                       Tensor kv_block_count, int64_t q_block, int64_t kv_block,
                                                       std::optional<double> scale) {
  constexpr const char* kOp = "attnx::block_sparse_attention";
  check_qkv(kOp, q, k, v, 4);
  const int64_t B = q.size(0), Lq = q.size(1), Hq = q.size(2), D = q.size(3);
  check_block_sparse_index(kOp, q, k, kv_block_index, kv_block_count, q_block, kv_block);
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  Tensor out = torch::stable::new_empty(q, {B, Lq, Hq, D});
  Tensor lse = torch::stable::new_empty(q, {B, Lq, Hq}, torch::headeronly::ScalarType::Float);
  fmha::FmhaFwdParams p = make_params(q, k, v, out, lse, scale);
  p.batch = static_cast<int>(B), p.seqlen_q = static_cast<int>(Lq), p.seqlen_k = static_cast<int>(k.size(1));
  set_block_sparse(p, kv_block_index, kv_block_count, q_block, kv_block);
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
  m.impl("block_sparse_attention", TORCH_BOX(&attnx::binding::block_sparse_attention_cuda));
}

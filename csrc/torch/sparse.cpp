// Stable-ABI bindings of sparse attention: CUDA kernels for the attnx::sparse_attention and
// attnx::sparse_attention_backward schemas (defined in python/attnx/ops/sparse.py).
//
// Index values are the Python API's business (range always, duplicates under ATTNX_DEBUG): the
// kernels treat any value outside [0, Lk) as an empty slot, so none can make them access memory
// out of bounds.
#include <cuda_runtime.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "checks.h"
#include "fmha_binding.h"
#include "sparse/sparse_api.h"

namespace attnx::binding {
namespace {

void check_indices(const char* op, const Tensor& q, const Tensor& indices) {
  STD_TORCH_CHECK(indices.is_cuda() && indices.get_device_index() == q.get_device_index(), op,
                  ": argument 'indices' must be on the device of 'q'");
  STD_TORCH_CHECK(indices.scalar_type() == ScalarType::Int && indices.dim() == 4 && indices.size(0) == q.size(0) &&
                      indices.size(1) == q.size(1) && indices.size(2) == q.size(2),
                  op, ": argument 'indices' must be int32 [B, Lq, H, k] with [B, Lq, H] of 'q' ", shape_str(q),
                  "; got shape ", shape_str(indices));
  STD_TORCH_CHECK(indices.size(3) <= 1 || indices.stride(3) == 1, op,
                  ": argument 'indices' needs a contiguous last dimension");
  STD_TORCH_CHECK(indices.size(3) < (1LL << 24), op, ": argument 'indices' has ", indices.size(3),
                  " slots per row; allowed: fewer than 2^24");
}

sparse::SparseFwdParams make_fwd_params(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& indices,
                                        const Tensor& out, const Tensor& lse, std::optional<double> scale) {
  sparse::SparseFwdParams p;
  p.dtype = q.scalar_type() == ScalarType::Half ? sparse::DType::kFloat16 : sparse::DType::kBFloat16;
  p.head_dim = static_cast<int>(q.size(3));
  p.batch = static_cast<int>(q.size(0)), p.seqlen_q = static_cast<int>(q.size(1));
  p.seqlen_k = static_cast<int>(k.size(1));
  p.num_heads_q = static_cast<int>(q.size(2)), p.num_heads_k = static_cast<int>(k.size(2));
  p.topk = static_cast<int>(indices.size(3));
  p.scale = static_cast<float>(scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(3))));
  p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr();
  p.q_batch_stride = q.stride(0), p.q_row_stride = q.stride(1), p.q_head_stride = q.stride(2);
  p.k_batch_stride = k.stride(0), p.k_row_stride = k.stride(1), p.k_head_stride = k.stride(2);
  p.v_batch_stride = v.stride(0), p.v_row_stride = v.stride(1), p.v_head_stride = v.stride(2);
  p.indices = static_cast<const int*>(indices.data_ptr());
  p.idx_batch_stride = indices.stride(0), p.idx_row_stride = indices.stride(1), p.idx_head_stride = indices.stride(2);
  p.out = out.data_ptr();
  p.o_batch_stride = out.stride(0), p.o_row_stride = out.stride(1), p.o_head_stride = out.stride(2);
  p.lse = static_cast<float*>(lse.data_ptr());
  return p;
}

// query_order: int32 [B, Hq, Lq] contiguous on q's device (a permutation per (batch, head); the
// Python API makes it, so its values are not checked here: the kernels clamp them into range).
void check_query_order(const char* op, const Tensor& q, const Tensor& order) {
  STD_TORCH_CHECK(order.is_cuda() && order.get_device_index() == q.get_device_index(), op,
                  ": argument 'query_order' must be on the device of 'q'");
  STD_TORCH_CHECK(order.scalar_type() == ScalarType::Int && order.dim() == 3 && order.size(0) == q.size(0) &&
                      order.size(1) == q.size(2) && order.size(2) == q.size(1) && order.is_contiguous(),
                  op, ": argument 'query_order' must be a contiguous int32 [B, H, Lq] tensor for 'q' ", shape_str(q),
                  "; got shape ", shape_str(order));
}

void check_unsupported(const char* op, Status status, int64_t head_dim) {
  STD_TORCH_CHECK(status != Status::kUnsupported, op, ": no native kernel for head dim ", head_dim,
                  " and this dtype (built: ", fmha::built_instances(), "); the Python API runs the reference for it");
}

// With query_order, the tiled forward (queries grouped by the order, the union of a tile's lists
// on tensor cores) where the pre-pass fits Lk; the per-query kernel otherwise. The backward takes
// the same order: tiled at head dim 64 (dQ per tile, dK/dV added to float32 accumulators).
std::tuple<Tensor, Tensor> sparse_attention_cuda(Tensor q, Tensor k, Tensor v, Tensor indices,
                                                 std::optional<double> scale, std::optional<Tensor> query_order) {
  constexpr const char* kOp = "attnx::sparse_attention";
  check_qkv(kOp, q, k, v, 4);
  STD_TORCH_CHECK(k.size(0) == q.size(0), kOp, ": argument 'k' has shape ", shape_str(k),
                  "; its batch must match 'q' ", shape_str(q));
  check_indices(kOp, q, indices);
  if (query_order.has_value()) check_query_order(kOp, q, *query_order);
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  Tensor out = torch::stable::new_empty(q, sizes(q));
  Tensor lse = torch::stable::new_empty(q, {q.size(0), q.size(1), q.size(2)}, ScalarType::Float);
  sparse::SparseFwdParams p = make_fwd_params(q, k, v, indices, out, lse, scale);
  std::optional<Tensor> workspace;
  if (query_order.has_value() && sparse::sparse_tile_unions_fit(p)) {
    p.query_order = static_cast<const int*>(query_order->data_ptr());
    workspace = torch::stable::new_empty(q, {std::max<int64_t>(sparse::sparse_gather_workspace_words(p), 1)},
                                         ScalarType::Int);
    p.gather_workspace = workspace->data_ptr();
  }
  const Status status = sparse::sparse_fwd(p, static_cast<cudaStream_t>(current_stream(kOp, q)));
  check_unsupported(kOp, status, p.head_dim);
  check_launched(kOp, status);
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor> sparse_attention_backward_cuda(Tensor dout, std::optional<Tensor> dlse, Tensor q,
                                                                  Tensor k, Tensor v, Tensor out, Tensor lse,
                                                                  Tensor indices, std::optional<double> scale,
                                                                  std::optional<Tensor> query_order) {
  constexpr const char* kOp = "attnx::sparse_attention_backward";
  check_qkv(kOp, q, k, v, 4);
  check_indices(kOp, q, indices);
  check_backward_tensors(kOp, q, out, dout, lse);
  if (query_order.has_value()) check_query_order(kOp, q, *query_order);
  out = tma_ready(out);  // 16-byte row loads need the same views TMA does
  dout = tma_ready(dout);
  lse = torch::stable::contiguous(lse);
  const std::optional<Tensor> dlse_c = checked_dlse(kOp, dlse, lse);
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  auto [dq, dk, dv] = new_grads(q, k, v);

  sparse::SparseBwdParams p;
  static_cast<sparse::SparseFwdParams&>(p) = make_fwd_params(q, k, v, indices, out, lse, scale);
  p.dout = dout.data_ptr();
  p.do_batch_stride = dout.stride(0), p.do_row_stride = dout.stride(1), p.do_head_stride = dout.stride(2);
  p.dlse = dlse_c.has_value() ? static_cast<const float*>(dlse_c->data_ptr()) : nullptr;
  p.dq = dq.data_ptr(), p.dk = dk.data_ptr(), p.dv = dv.data_ptr();
  p.dq_batch_stride = dq.stride(0), p.dq_row_stride = dq.stride(1), p.dq_head_stride = dq.stride(2);
  p.dk_batch_stride = dk.stride(0), p.dk_row_stride = dk.stride(1), p.dk_head_stride = dk.stride(2);
  p.dv_batch_stride = dv.stride(0), p.dv_row_stride = dv.stride(1), p.dv_head_stride = dv.stride(2);
  // With a query order and head dim 64 the tiled backward (its own workspace), else the per-row one.
  if (query_order.has_value() && p.head_dim == 64 && sparse::sparse_tile_unions_fit(p)) {
    p.query_order = static_cast<const int*>(query_order->data_ptr());
  }
  Tensor workspace = torch::stable::new_empty(
      q,
      {std::max<int64_t>(p.query_order != nullptr ? sparse::sparse_gather_bwd_workspace_words(p)
                                                  : sparse::sparse_bwd_workspace_words(p),
                         1)},
      ScalarType::Int);
  if (p.query_order != nullptr) {
    p.gather_workspace = workspace.data_ptr();
  } else {
    p.workspace = workspace.data_ptr();
  }
  const Status status = sparse::sparse_bwd(p, static_cast<cudaStream_t>(current_stream(kOp, q)));
  check_unsupported(kOp, status, p.head_dim);
  STD_TORCH_CHECK(status != Status::kInvalidArgument, kOp, ": sizes out of the native backward's range (Lq * Hq / Hk = ",
                  int64_t(p.seqlen_q) * (p.num_heads_q / p.num_heads_k),
                  " query ids per KV head must fit its shared-memory bitmap, up to about 1.6M; Lq * Hq / Hk * k "
                  "below 2^31)");
  check_launched(kOp, status);
  return {dq, dk, dv};
}

Tensor sparse_list_minhash_cuda(Tensor indices, int64_t seqlen_k) {
  constexpr const char* kOp = "attnx::sparse_list_minhash";
  STD_TORCH_CHECK(indices.is_cuda() && indices.scalar_type() == ScalarType::Int && indices.dim() == 4, kOp,
                  ": argument 'indices' must be a CUDA int32 [B, Lq, H, k] tensor; got shape ", shape_str(indices));
  STD_TORCH_CHECK(indices.size(3) <= 1 || indices.stride(3) == 1, kOp,
                  ": argument 'indices' needs a contiguous last dimension");
  for (int d = 0; d < 4; ++d)
    STD_TORCH_CHECK(indices.size(d) < (1LL << 31), kOp, ": argument 'indices' has shape ", shape_str(indices),
                    "; allowed: every size below 2^31");
  STD_TORCH_CHECK(seqlen_k >= 0 && seqlen_k < (1LL << 31), kOp, ": argument 'seqlen_k' is ", seqlen_k,
                  "; allowed: 0 to 2^31 - 1");
  torch::stable::accelerator::DeviceGuard guard(indices.get_device_index());
  Tensor keys = torch::stable::new_empty(indices, {indices.size(0), indices.size(2), indices.size(1)}, ScalarType::Long);
  sparse::SparseMinhashParams p;
  p.indices = static_cast<const int*>(indices.data_ptr());
  p.idx_batch_stride = indices.stride(0), p.idx_row_stride = indices.stride(1), p.idx_head_stride = indices.stride(2);
  p.batch = static_cast<int>(indices.size(0)), p.seqlen_q = static_cast<int>(indices.size(1));
  p.heads = static_cast<int>(indices.size(2)), p.topk = static_cast<int>(indices.size(3));
  p.seqlen_k = static_cast<int>(seqlen_k);
  p.keys = static_cast<int64_t*>(keys.data_ptr());
  const Status status = sparse::sparse_list_minhash(p, static_cast<cudaStream_t>(current_stream(kOp, indices)));
  check_launched(kOp, status);
  return keys;
}

// The tiled forward's pre-pass alone, for tests: its raw workspace (int32, the layout of
// SparseGatherWorkspace), which attnx.ops.sparse.parse_tile_unions reads.
Tensor sparse_tile_unions_cuda(Tensor indices, Tensor query_order, int64_t seqlen_k) {
  constexpr const char* kOp = "attnx::sparse_tile_unions";
  STD_TORCH_CHECK(indices.is_cuda() && indices.scalar_type() == ScalarType::Int && indices.dim() == 4, kOp,
                  ": argument 'indices' must be a CUDA int32 [B, Lq, H, k] tensor; got shape ", shape_str(indices));
  STD_TORCH_CHECK(indices.size(3) <= 1 || indices.stride(3) == 1, kOp,
                  ": argument 'indices' needs a contiguous last dimension");
  STD_TORCH_CHECK(query_order.is_cuda() && query_order.get_device_index() == indices.get_device_index() &&
                      query_order.scalar_type() == ScalarType::Int && query_order.dim() == 3 &&
                      query_order.size(0) == indices.size(0) && query_order.size(1) == indices.size(2) &&
                      query_order.size(2) == indices.size(1) && query_order.is_contiguous(),
                  kOp, ": argument 'query_order' must be a contiguous int32 [B, H, Lq] tensor beside 'indices' ",
                  shape_str(indices), "; got shape ", shape_str(query_order));
  STD_TORCH_CHECK(seqlen_k >= 0 && seqlen_k < (1LL << 31), kOp, ": argument 'seqlen_k' is ", seqlen_k,
                  "; allowed: 0 to 2^31 - 1");
  sparse::SparseFwdParams p;
  p.batch = static_cast<int>(indices.size(0)), p.seqlen_q = static_cast<int>(indices.size(1));
  p.num_heads_q = p.num_heads_k = static_cast<int>(indices.size(2));
  p.topk = static_cast<int>(indices.size(3));
  p.seqlen_k = static_cast<int>(seqlen_k);
  p.indices = static_cast<const int*>(indices.data_ptr());
  p.idx_batch_stride = indices.stride(0), p.idx_row_stride = indices.stride(1), p.idx_head_stride = indices.stride(2);
  p.query_order = static_cast<const int*>(query_order.data_ptr());
  STD_TORCH_CHECK(sparse::sparse_tile_unions_fit(p), kOp, ": argument 'seqlen_k' is ", seqlen_k,
                  "; the pre-pass's shared-memory bitmap allows about 170K keys");
  torch::stable::accelerator::DeviceGuard guard(indices.get_device_index());
  Tensor ws = torch::stable::new_empty(indices, {std::max<int64_t>(sparse::sparse_gather_workspace_words(p), 1)},
                                       ScalarType::Int);
  p.gather_workspace = ws.data_ptr();
  const Status status = sparse::sparse_build_tile_unions(p, static_cast<cudaStream_t>(current_stream(kOp, indices)));
  check_launched(kOp, status);
  return ws;
}

}  // namespace
}  // namespace attnx::binding

STABLE_TORCH_LIBRARY_IMPL(attnx, CUDA, m) {
  m.impl("sparse_attention", TORCH_BOX(&attnx::binding::sparse_attention_cuda));
  m.impl("sparse_attention_backward", TORCH_BOX(&attnx::binding::sparse_attention_backward_cuda));
  m.impl("sparse_list_minhash", TORCH_BOX(&attnx::binding::sparse_list_minhash_cuda));
  m.impl("sparse_tile_unions", TORCH_BOX(&attnx::binding::sparse_tile_unions_cuda));
}

// Stable-ABI bindings of the fused-MHA backward: CUDA kernels for the attnx::attention_backward
// and attnx::varlen_attention_backward schemas (defined in python/attnx/ops/attention.py via
// define_attention_like). Autograd reaches them after a native forward.
#include <cuda_runtime.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "checks.h"
#include "fmha_binding.h"

namespace attnx::binding {
namespace {

// Block-sparse index tensors of the backward (checked by the caller).
struct BlockSparseArgs {
  const Tensor& index;
  const Tensor& count;
  int64_t q_block, kv_block;
};

std::tuple<Tensor, Tensor, Tensor> run_backward(const char* op, Tensor dout, std::optional<Tensor> dlse, Tensor q,
                                                Tensor k, Tensor v, Tensor out, Tensor lse,
                                                std::optional<double> scale, fmha::FmhaFwdParams shape_params,
                                                int64_t rank, const BlockSparseArgs* block_sparse = nullptr) {
  // q, k, v were checked by the caller (check_qkv).
  check_backward_tensors(op, q, out, dout, lse);
  STD_TORCH_CHECK(out.stride(rank - 1) == 1, op, ": argument 'out' needs a contiguous last dimension");
  dout = tma_ready(dout);
  lse = torch::stable::contiguous(lse);
  const std::optional<Tensor> dlse_c = checked_dlse(op, dlse, lse);
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  auto [dq, dk, dv] = new_grads(q, k, v);
  const int64_t rows_q = rank == 4 ? q.size(0) * q.size(1) : q.size(0);
  const int64_t rows_k = rank == 4 ? k.size(0) * k.size(1) : k.size(0);
  if (rows_q == 0 || rows_k == 0) {  // nothing attends: every gradient is 0
    torch::stable::zero_(dq), torch::stable::zero_(dk), torch::stable::zero_(dv);
    return {dq, dk, dv};
  }

  fmha::FmhaBwdParams p;
  static_cast<fmha::FmhaFwdParams&>(p) = make_params(q, k, v, out, lse, scale);
  p.batch = shape_params.batch, p.seqlen_q = shape_params.seqlen_q, p.seqlen_k = shape_params.seqlen_k;
  p.cu_seqlens_q = shape_params.cu_seqlens_q, p.cu_seqlens_k = shape_params.cu_seqlens_k;
  p.total_q = shape_params.total_q, p.total_k = shape_params.total_k;
  p.causal = shape_params.causal, p.window_left = shape_params.window_left, p.window_right = shape_params.window_right;
  if (block_sparse != nullptr) set_block_sparse(p, block_sparse->index, block_sparse->count, block_sparse->q_block,
                                                block_sparse->kv_block);
  p.dout = dout.data_ptr();
  p.do_row_stride = dout.stride(rank - 3), p.do_head_stride = dout.stride(rank - 2);
  p.dlse = dlse_c.has_value() ? static_cast<const float*>(dlse_c->data_ptr()) : nullptr;
  p.dq = dq.data_ptr(), p.dk = dk.data_ptr(), p.dv = dv.data_ptr();
  p.dq_row_stride = dq.stride(rank - 3), p.dq_head_stride = dq.stride(rank - 2);
  p.dk_row_stride = dk.stride(rank - 3), p.dk_head_stride = dk.stride(rank - 2);
  p.dv_row_stride = dv.stride(rank - 3), p.dv_head_stride = dv.stride(rank - 2);
  if (rank == 4) {
    p.do_batch_stride = dout.stride(0);
    p.dq_batch_stride = dq.stride(0), p.dk_batch_stride = dk.stride(0), p.dv_batch_stride = dv.stride(0);
  }
  Tensor workspace = torch::stable::new_empty(q, {fmha::fmha_bwd_workspace_floats(p)}, ScalarType::Float);
  p.workspace = static_cast<float*>(workspace.data_ptr());
  p.ws_rows = fmha::fmha_bwd_ws_rows(p);
  std::optional<Tensor> bs_lists;  // block-sparse: the transposed tile lists (fmha_bwd builds them)
  if (p.kv_block_index != nullptr) {
    bs_lists = torch::stable::new_empty(q, {std::max<int64_t>(fmha::fmha_bwd_bs_list_ints(p), 1)}, ScalarType::Int);
    p.bs_lists = static_cast<int*>(bs_lists->data_ptr());
  }

  const Status status = fmha::fmha_bwd(p, static_cast<cudaStream_t>(current_stream(op, q)));
  STD_TORCH_CHECK(status != Status::kUnsupported, op, ": no native backward for head dim ", p.head_dim,
                  " and this dtype (built: ", fmha::built_instances(), ")",
                  p.kv_block_index != nullptr ? " with these tiles (kv_block must be 128, q_block a multiple of 64)"
                                              : "");
  check_launched(op, status);
  return {dq, dk, dv};
}

std::tuple<Tensor, Tensor, Tensor> attention_backward_cuda(Tensor dout, std::optional<Tensor> dlse, Tensor q,
                                                           Tensor k, Tensor v, Tensor out, Tensor lse, bool causal,
                                                           std::optional<double> scale) {
  constexpr const char* kOp = "attnx::attention_backward";
  check_qkv(kOp, q, k, v, 4);
  STD_TORCH_CHECK(k.size(0) == q.size(0), kOp, ": argument 'k' has shape ", shape_str(k),
                  "; its batch must match 'q' ", shape_str(q));
  fmha::FmhaFwdParams s;
  s.batch = static_cast<int>(q.size(0)), s.seqlen_q = static_cast<int>(q.size(1)),
  s.seqlen_k = static_cast<int>(k.size(1));
  s.causal = causal;
  return run_backward(kOp, dout, dlse, q, k, v, out, lse, scale, s, 4);
}

std::tuple<Tensor, Tensor, Tensor> varlen_attention_backward_cuda(
    Tensor dout, std::optional<Tensor> dlse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,
    Tensor cu_seqlens_q, Tensor cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal,
    int64_t window_left, int64_t window_right, std::optional<double> scale) {
  constexpr const char* kOp = "attnx::varlen_attention_backward";
  check_qkv(kOp, q, k, v, 3);
  check_cu_seqlens(kOp, cu_seqlens_q, cu_seqlens_k, q, max_seqlen_q, max_seqlen_k);
  fmha::FmhaFwdParams s;
  s.batch = static_cast<int>(cu_seqlens_q.size(0) - 1);
  s.cu_seqlens_q = static_cast<const int*>(cu_seqlens_q.data_ptr());
  s.cu_seqlens_k = static_cast<const int*>(cu_seqlens_k.data_ptr());
  s.total_q = static_cast<int>(q.size(0)), s.total_k = static_cast<int>(k.size(0));
  s.seqlen_q = static_cast<int>(max_seqlen_q), s.seqlen_k = static_cast<int>(max_seqlen_k);
  s.causal = causal;
  s.window_left = static_cast<int>(window_left < 0 ? -1 : std::min<int64_t>(window_left, 1LL << 30));
  s.window_right = static_cast<int>(window_right < 0 ? -1 : std::min<int64_t>(window_right, 1LL << 30));
  return run_backward(kOp, dout, dlse, q, k, v, out, lse, scale, s, 3);
}

// Block-sparse backward: the same kernel walking, per KV tile, the Q tiles whose forward list
// holds it. Index tensors as the forward's (checked there; values are the Python API's business
// and clamped by the kernels).
std::tuple<Tensor, Tensor, Tensor> block_sparse_attention_backward_cuda(
    Tensor dout, std::optional<Tensor> dlse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,
    Tensor kv_block_index, Tensor kv_block_count, int64_t q_block, int64_t kv_block, std::optional<double> scale) {
  constexpr const char* kOp = "attnx::block_sparse_attention_backward";
  check_qkv(kOp, q, k, v, 4);
  check_block_sparse_index(kOp, q, k, kv_block_index, kv_block_count, q_block, kv_block);
  fmha::FmhaFwdParams s;
  s.batch = static_cast<int>(q.size(0)), s.seqlen_q = static_cast<int>(q.size(1));
  s.seqlen_k = static_cast<int>(k.size(1));
  const BlockSparseArgs bs{kv_block_index, kv_block_count, q_block, kv_block};
  return run_backward(kOp, dout, dlse, q, k, v, out, lse, scale, s, 4, &bs);
}

}  // namespace
}  // namespace attnx::binding

STABLE_TORCH_LIBRARY_IMPL(attnx, CUDA, m) {
  m.impl("attention_backward", TORCH_BOX(&attnx::binding::attention_backward_cuda));
  m.impl("varlen_attention_backward", TORCH_BOX(&attnx::binding::varlen_attention_backward_cuda));
  m.impl("block_sparse_attention_backward", TORCH_BOX(&attnx::binding::block_sparse_attention_backward_cuda));
}

// Stable-ABI bindings of the PQ encoding and top-k selection: the CUDA kernels for the
// attnx::pq_encode and attnx::pq_topk schemas (defined in python/attnx/ops/pq.py). Code values (< C) are the Python API's business: the
// kernel's LUT rows are padded to 256 entries, so no code can make it read out of bounds.
#include <cuda_runtime.h>

#include <cstdint>
#include <optional>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "checks.h"
#include "fmha_binding.h"
#include "pq/pq_api.h"

namespace attnx::binding {
namespace {

pq::QType q_type(const char* op, const char* arg, const Tensor& q) {
  switch (q.scalar_type()) {
    case ScalarType::Half: return pq::QType::kFloat16;
    case ScalarType::BFloat16: return pq::QType::kBFloat16;
    case ScalarType::Float: return pq::QType::kFloat32;
    default: STD_TORCH_CHECK(false, op, ": argument '", arg, "' has an unsupported dtype; allowed on CUDA: float16, "
                                    "bfloat16, float32 (float64 runs the reference through the Python API)");
  }
  return pq::QType::kFloat32;
}

void check_centroids(const char* op, const Tensor& centroids, const Tensor& like, int64_t H, int64_t D) {
  STD_TORCH_CHECK(centroids.is_cuda() && centroids.get_device_index() == like.get_device_index() &&
                      centroids.dim() == 4 && centroids.scalar_type() == ScalarType::Float && centroids.is_contiguous(),
                  op, ": argument 'centroids' must be contiguous float32 [H, M, C, D / M] on the device of the ",
                  "input; got shape ", shape_str(centroids));
  STD_TORCH_CHECK(centroids.size(0) == H && centroids.size(1) * centroids.size(3) == D, op,
                  ": argument 'centroids' has shape ", shape_str(centroids), "; expected [H, M, C, D / M] with H = ", H,
                  " and M * (D / M) = D = ", D);
}

Tensor pq_encode_cuda(Tensor x, Tensor centroids) {
  constexpr const char* kOp = "attnx::pq_encode";
  STD_TORCH_CHECK(x.is_cuda() && x.dim() == 4, kOp, ": argument 'x' must be a CUDA tensor [B, L, H, D]; got shape ",
                  shape_str(x));
  const pq::QType xt = q_type(kOp, "x", x);
  STD_TORCH_CHECK(x.numel() == 0 || x.stride(3) == 1, kOp, ": argument 'x' needs a contiguous last dimension");
  const int64_t B = x.size(0), L = x.size(1), H = x.size(2), D = x.size(3);
  check_centroids(kOp, centroids, x, H, D);
  const int64_t M = centroids.size(1), C = centroids.size(2), ds = centroids.size(3);
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  Tensor codes = torch::stable::new_empty(x, {B, L, H, M}, ScalarType::Byte);

  pq::PqEncodeParams p;
  p.x_type = xt;
  p.batch = (int)B, p.seqlen = (int)L, p.num_heads = (int)H;
  p.num_subspaces = (int)M, p.num_centroids = (int)C, p.sub_dim = (int)ds;
  p.x = x.data_ptr();
  p.x_batch_stride = x.stride(0), p.x_row_stride = x.stride(1), p.x_head_stride = x.stride(2);
  p.centroids = static_cast<const float*>(centroids.data_ptr());
  p.codes = static_cast<uint8_t*>(codes.data_ptr());
  STD_TORCH_CHECK(B <= INT32_MAX && L <= INT32_MAX && pq::pq_encode_supported(p), kOp, ": no native kernel for D / M = ",
                  ds, ", C = ", C, " (native: D / M in {2, 4, 8, 16, 32}, C <= 256); the Python API runs the ",
                  "reference for it");
  check_launched(kOp, pq::pq_encode(p, static_cast<cudaStream_t>(current_stream(kOp, x))));
  return codes;
}

Tensor pq_topk_cuda(Tensor q, Tensor codes, Tensor centroids, int64_t k, bool causal, bool sorted) {
  constexpr const char* kOp = "attnx::pq_topk";
  STD_TORCH_CHECK(q.is_cuda() && q.dim() == 4, kOp, ": argument 'q' must be a CUDA tensor [B, Lq, H, D]; got shape ",
                  shape_str(q));
  const pq::QType qt = q_type(kOp, "q", q);
  STD_TORCH_CHECK(q.numel() == 0 || q.stride(3) == 1, kOp, ": argument 'q' needs a contiguous last dimension");
  STD_TORCH_CHECK(codes.is_cuda() && codes.get_device_index() == q.get_device_index() && codes.dim() == 4 &&
                      codes.scalar_type() == ScalarType::Byte,
                  kOp, ": argument 'k_codes' must be uint8 [B, Lk, H, M] on the device of 'q'; got shape ",
                  shape_str(codes));
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = codes.size(1);
  check_centroids(kOp, centroids, q, H, D);
  const int64_t M = centroids.size(1), C = centroids.size(2), ds = centroids.size(3);
  STD_TORCH_CHECK(codes.size(0) == B && codes.size(2) == H && codes.size(3) == M, kOp, ": argument 'k_codes' has shape ",
                  shape_str(codes), "; expected [", B, ", Lk, ", H, ", ", M, "] (B of 'q', H and M of 'centroids')");
  STD_TORCH_CHECK(codes.numel() == 0 || codes.stride(3) == 1, kOp,
                  ": argument 'k_codes' needs a contiguous last dimension");
  STD_TORCH_CHECK(k >= 1 && k <= Lk, kOp, ": argument 'k' is ", k, "; allowed: 1 <= k <= Lk = ", Lk);
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  Tensor out = torch::stable::new_empty(q, {B, Lq, H, k}, ScalarType::Int);

  pq::PqTopkParams p;
  p.q_type = qt;
  p.batch = (int)B, p.seqlen_q = (int)Lq, p.seqlen_k = (int)Lk, p.num_heads = (int)H;
  p.num_subspaces = (int)M, p.num_centroids = (int)C, p.sub_dim = (int)ds, p.topk = (int)k, p.causal = causal;
  p.sorted = sorted;
  p.q = q.data_ptr();
  p.q_batch_stride = q.stride(0), p.q_row_stride = q.stride(1), p.q_head_stride = q.stride(2);
  p.codes = static_cast<const uint8_t*>(codes.data_ptr());
  p.codes_batch_stride = codes.stride(0), p.codes_row_stride = codes.stride(1), p.codes_head_stride = codes.stride(2);
  p.centroids = static_cast<const float*>(centroids.data_ptr());
  p.out = static_cast<int32_t*>(out.data_ptr());
  STD_TORCH_CHECK(pq::pq_topk_supported(p), kOp, ": no native kernel for M = ", M, ", C = ", C, ", D = ", D,
                  ", k = ", k, " (native: M in {4, 8, 16}, C <= 256, D <= 256, k + 256 slots of selection buffer in ",
                  "shared memory, codes aligned to M bytes); the Python API runs the reference for it");
  // The tensor-core scan's decoded keys and candidate lists (long rows only).
  const int64_t work_bytes = pq::pq_topk_workspace_bytes(p);
  std::optional<Tensor> work;
  if (work_bytes > 0) {
    work = torch::stable::new_empty(q, {work_bytes}, ScalarType::Byte);
    p.workspace = work->data_ptr();
  }
  check_launched(kOp, pq::pq_topk(p, static_cast<cudaStream_t>(current_stream(kOp, q))));
  return out;
}

}  // namespace
}  // namespace attnx::binding

STABLE_TORCH_LIBRARY_IMPL(attnx, CUDA, m) {
  m.impl("pq_encode", TORCH_BOX(&attnx::binding::pq_encode_cuda));
  m.impl("pq_topk", TORCH_BOX(&attnx::binding::pq_topk_cuda));
}

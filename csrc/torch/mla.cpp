// Stable-ABI bindings of the MLA decode: CUDA kernels for the attnx::mla_decode_metadata and
// attnx::mla_decode schemas (defined in python/attnx/ops/mla.py).
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
#include "fmha_binding.h"
#include "mla/mla_api.h"

namespace attnx::binding {
namespace {

void check_int32_vector(const char* op, const char* arg, const Tensor& t, const Tensor& like) {
  STD_TORCH_CHECK(t.is_cuda() && t.get_device_index() == like.get_device_index(), op, ": argument '", arg,
                  "' must be on the device of 'q'");
  STD_TORCH_CHECK(t.scalar_type() == ScalarType::Int && t.dim() == 1 && (t.size(0) <= 1 || t.stride(0) == 1), op,
                  ": argument '", arg, "' must be a contiguous int32 vector; got shape ", shape_str(t));
}

std::tuple<Tensor, Tensor> plan(const char* op, const Tensor& cache_seqlens, int num_q_heads, int num_kv_heads,
                                int q_len, int num_sms) {
  const int num_parts = mla::mla_num_parts(num_sms, num_q_heads, num_kv_heads, q_len);
  const int64_t B = cache_seqlens.size(0);
  Tensor meta = torch::stable::new_empty(cache_seqlens, {num_parts, mla::kMetaStride}, ScalarType::Int);
  Tensor splits = torch::stable::new_empty(cache_seqlens, {B + 1}, ScalarType::Int);
  const Status status = mla::mla_decode_metadata(static_cast<const int*>(cache_seqlens.data_ptr()),
                                                 static_cast<int>(B), num_parts,
                                                 mla::mla_piece_fixed_cost(num_q_heads, num_kv_heads, q_len),
                                                 static_cast<int*>(meta.data_ptr()),
                                                 static_cast<int*>(splits.data_ptr()),
                                                 static_cast<cudaStream_t>(current_stream(op, cache_seqlens)));
  STD_TORCH_CHECK(status == Status::kSuccess, op, ": planning failed: ", status_string(status),
                  " (batch ", B, "; the GPU planner takes up to 51200 sequences)");
  return {meta, splits};
}

std::tuple<Tensor, Tensor> mla_decode_metadata_cuda(Tensor cache_seqlens, int64_t num_q_heads, int64_t num_kv_heads,
                                                    int64_t q_len) {
  constexpr const char* kOp = "attnx::mla_decode_metadata";
  check_int32_vector(kOp, "cache_seqlens", cache_seqlens, cache_seqlens);
  STD_TORCH_CHECK(num_q_heads > 0 && num_kv_heads > 0 && num_q_heads % num_kv_heads == 0 && q_len > 0, kOp,
                  ": num_q_heads, num_kv_heads, q_len must be positive with num_kv_heads dividing num_q_heads");
  torch::stable::accelerator::DeviceGuard guard(cache_seqlens.get_device_index());
  return plan(kOp, cache_seqlens, (int)num_q_heads, (int)num_kv_heads, (int)q_len, num_sms(cache_seqlens));
}

// cache_seqlens values and block-table entries are the Python API's business (attnx.mla_decode):
// the kernel clamps every length to its block table's capacity, and TMA reads pages outside the
// cache as zeros, so no value can make it access memory out of bounds.
std::tuple<Tensor, Tensor> mla_decode_cuda(Tensor q, Tensor kv_cache, Tensor block_table, Tensor cache_seqlens,
                                           int64_t head_dim_v, std::optional<double> scale, bool causal,
                                           std::optional<Tensor> tile_scheduler_metadata,
                                           std::optional<Tensor> num_splits) {
  constexpr const char* kOp = "attnx::mla_decode";
  check_cuda_16bit(kOp, "q", q, 4);
  check_cuda_16bit(kOp, "kv_cache", kv_cache, 4);
  STD_TORCH_CHECK(kv_cache.scalar_type() == q.scalar_type() && kv_cache.get_device_index() == q.get_device_index(),
                  kOp, ": argument 'kv_cache' must have the dtype and device of 'q'");
  const int64_t B = q.size(0), Sq = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t num_pages = kv_cache.size(0), page = kv_cache.size(1), Hk = kv_cache.size(2);
  STD_TORCH_CHECK(D == 576 && kv_cache.size(3) == 576 && head_dim_v == 512, kOp,
                  ": the native kernel takes head dims 576 (keys) / 512 (values); got q ", shape_str(q),
                  ", kv_cache ", shape_str(kv_cache), ", head_dim_v ", head_dim_v);
  STD_TORCH_CHECK(page == 64, kOp, ": argument 'kv_cache' has page size ", page, "; allowed: 64");
  STD_TORCH_CHECK(kv_cache.is_contiguous(), kOp, ": argument 'kv_cache' must be contiguous");
  STD_TORCH_CHECK(Hk > 0 && Hq % Hk == 0, kOp, ": argument 'kv_cache' has ", Hk, " heads; allowed: a divisor of ",
                  Hq, " (the heads of 'q')");
  check_16b_aligned(kOp, "q", q);
  check_16b_aligned(kOp, "kv_cache", kv_cache);
  STD_TORCH_CHECK(block_table.is_cuda() && block_table.get_device_index() == q.get_device_index() &&
                      block_table.scalar_type() == ScalarType::Int && block_table.dim() == 2 &&
                      block_table.size(0) == B && (block_table.size(1) <= 1 || block_table.stride(1) == 1),
                  kOp, ": argument 'block_table' must be an int32 [", B, ", max_pages] tensor on the device of 'q' "
                  "with contiguous rows; got shape ", shape_str(block_table));
  check_int32_vector(kOp, "cache_seqlens", cache_seqlens, q);
  STD_TORCH_CHECK(cache_seqlens.size(0) == B, kOp, ": argument 'cache_seqlens' has ", cache_seqlens.size(0),
                  " entries; expected one per sequence (", B, ")");
  STD_TORCH_CHECK(B < (1LL << 31) && num_pages < (1LL << 31) && block_table.size(1) * 64 < (1LL << 31) &&
                      Sq * Hq < (1LL << 24),
                  kOp, ": sizes out of the supported range");
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());

  Tensor out = torch::stable::new_empty(q, {B, Sq, Hq, head_dim_v});
  Tensor lse = torch::stable::new_empty(q, {B, Sq, Hq}, ScalarType::Float);
  if (B == 0 || Sq == 0 || Hq == 0) return {out, lse};

  Tensor meta, splits;
  if (tile_scheduler_metadata.has_value() && num_splits.has_value()) {
    meta = *tile_scheduler_metadata, splits = *num_splits;
    STD_TORCH_CHECK(meta.is_cuda() && meta.scalar_type() == ScalarType::Int && meta.dim() == 2 &&
                        meta.size(1) == mla::kMetaStride && meta.size(0) >= 1 && meta.size(0) <= 65535 &&
                        meta.is_contiguous() && meta.get_device_index() == q.get_device_index(),
                    kOp, ": argument 'tile_scheduler_metadata' must come from attnx.mla_decode_metadata; got shape ",
                    shape_str(meta));
    check_int32_vector(kOp, "num_splits", splits, q);
    STD_TORCH_CHECK(splits.size(0) == B + 1, kOp, ": argument 'num_splits' has ", splits.size(0),
                    " entries; expected batch + 1 (", B + 1, ")");
  } else {
    STD_TORCH_CHECK(!tile_scheduler_metadata.has_value() && !num_splits.has_value(), kOp,
                    ": pass both 'tile_scheduler_metadata' and 'num_splits' (attnx.mla_decode_metadata) or neither");
    std::tie(meta, splits) = plan(kOp, cache_seqlens, (int)Hq, (int)Hk, (int)Sq, num_sms(q));
  }

  mla::MlaDecodeParams p;
  p.dtype = q.scalar_type() == ScalarType::Half ? mla::DType::kFloat16 : mla::DType::kBFloat16;
  p.head_dim = static_cast<int>(D), p.head_dim_v = static_cast<int>(head_dim_v);
  p.batch = static_cast<int>(B), p.seqlen_q = static_cast<int>(Sq);
  p.num_heads_q = static_cast<int>(Hq), p.num_heads_k = static_cast<int>(Hk);
  p.page_size = static_cast<int>(page);
  p.scale = static_cast<float>(scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(D)));
  p.causal = causal;
  p.q = q.data_ptr();
  p.q_batch_stride = q.stride(0), p.q_row_stride = q.stride(1), p.q_head_stride = q.stride(2);
  p.kv = kv_cache.data_ptr();
  p.num_pages = static_cast<int>(num_pages);
  p.block_table = static_cast<const int*>(block_table.data_ptr());
  p.block_table_stride = block_table.stride(0);
  p.max_pages = static_cast<int>(block_table.size(1));
  p.cache_seqlens = static_cast<const int*>(cache_seqlens.data_ptr());
  p.out = out.data_ptr();
  p.o_batch_stride = out.stride(0), p.o_row_stride = out.stride(1), p.o_head_stride = out.stride(2);
  p.lse = static_cast<float*>(lse.data_ptr());
  p.tile_scheduler_metadata = static_cast<const int*>(meta.data_ptr());
  p.num_splits = static_cast<const int*>(splits.data_ptr());
  p.num_parts = static_cast<int>(meta.size(0));
  const int64_t ws_rows = mla::mla_workspace_rows(p);
  // Partial outputs in q's dtype (16-bit, checked above: half a float per value), then their float lse.
  Tensor workspace = torch::stable::new_empty(q, {ws_rows * (p.head_dim_v / 2 + 1)}, ScalarType::Float);
  p.o_accum = workspace.data_ptr();
  p.lse_accum = static_cast<float*>(workspace.data_ptr()) + ws_rows * (p.head_dim_v / 2);

  const Status status = mla::mla_decode(p, static_cast<cudaStream_t>(current_stream(kOp, q)));
  STD_TORCH_CHECK(status != Status::kUnsupported, kOp, ": no native kernel for this dtype (built: ",
                  fmha::built_instances(), "); the Python API runs the reference for it");
  check_launched(kOp, status);
  return {out, lse};
}

}  // namespace
}  // namespace attnx::binding

STABLE_TORCH_LIBRARY_IMPL(attnx, CUDA, m) {
  m.impl("mla_decode_metadata", TORCH_BOX(&attnx::binding::mla_decode_metadata_cuda));
  m.impl("mla_decode", TORCH_BOX(&attnx::binding::mla_decode_cuda));
}

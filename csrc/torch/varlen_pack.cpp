// Stable-ABI bindings of unpad and pad: CUDA kernels for the attnx::unpad and attnx::pad schemas
// (defined in python/attnx/ops/attention.py). Any dtype: rows are copied as bytes.
//
// unpad reads T (the packed row count) and max_seqlen back to the host in one copy: one sync, as
// any unpad with data-dependent output sizes has; max_seqlen is returned as a CPU tensor. pad never syncs; the Python API
// checks the range of 'indices' once per tensor, and the kernels skip values out of range.
#include <cuda_runtime.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "checks.h"
#include "fmha_binding.h"
#include "varlen/varlen_pack_api.h"

namespace attnx::binding {
namespace {

int64_t row_bytes(const Tensor& x, int64_t leading) {
  int64_t n = static_cast<int64_t>(x.element_size());
  for (int64_t i = leading; i < x.dim(); ++i) n *= x.size(i);
  return n;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> unpad_cuda(Tensor x, Tensor mask) {
  constexpr const char* kOp = "attnx::unpad";
  STD_TORCH_CHECK(x.is_cuda() && x.dim() >= 2, kOp, ": argument 'x' must be a CUDA tensor [B, L, ...]; got shape ",
                  shape_str(x));
  STD_TORCH_CHECK(mask.is_cuda() && mask.get_device_index() == x.get_device_index(), kOp,
                  ": argument 'mask' must be on the device of 'x'");
  STD_TORCH_CHECK(mask.scalar_type() == ScalarType::Bool && mask.dim() == 2 && mask.size(0) == x.size(0) &&
                      mask.size(1) == x.size(1),
                  kOp, ": argument 'mask' must be bool [B, L] = [", x.size(0), ", ", x.size(1), "]; got shape ",
                  shape_str(mask));
  const int64_t batch = x.size(0), seqlen = x.size(1);
  STD_TORCH_CHECK(batch * seqlen < (int64_t(1) << 31), kOp, ": B * L = ", batch * seqlen,
                  " token slots; allowed: below 2^31 (cu_seqlens are int32)");
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  x = torch::stable::contiguous(x);
  mask = torch::stable::contiguous(mask);
  auto stream = static_cast<cudaStream_t>(current_stream(kOp, x));

  // workspace: the chunk offsets, then {T, max_seqlen}
  const int64_t chunk_words = varlen::unpad_workspace_words(batch, seqlen);
  Tensor workspace = torch::stable::new_empty(x, {chunk_words + 2}, ScalarType::Int);
  Tensor cu = torch::stable::new_empty(x, {batch + 1}, ScalarType::Int);
  const auto* mask_bytes = static_cast<const uint8_t*>(mask.data_ptr());
  auto* ws = static_cast<int32_t*>(workspace.data_ptr());
  check_launched(kOp, varlen::unpad_count(mask_bytes, batch, seqlen, ws, static_cast<int32_t*>(cu.data_ptr()),
                                          ws + chunk_words, stream));
  int32_t sizes[2] = {0, 0};
  STD_TORCH_CHECK(cudaMemcpyAsync(sizes, ws + chunk_words, sizeof(sizes), cudaMemcpyDeviceToHost, stream) == cudaSuccess &&
                      cudaStreamSynchronize(stream) == cudaSuccess,
                  kOp, ": could not read the packed row count back (", cudaGetErrorString(cudaGetLastError()), ")");
  const int32_t total = sizes[0];
  // max_seqlen lives on the host: callers need it as an int, and reading it from the device would
  // be a second sync, after the gather.
  Tensor max_seqlen = torch::stable::full({}, static_cast<double>(sizes[1]), ScalarType::Long, std::nullopt,
                                          torch::stable::Device(torch::headeronly::DeviceType::CPU));

  std::vector<int64_t> packed_shape{total};
  for (int64_t i = 2; i < x.dim(); ++i) packed_shape.push_back(x.size(i));
  Tensor packed = torch::stable::new_empty(x, packed_shape);
  Tensor indices = torch::stable::new_empty(x, {total}, ScalarType::Long);
  check_launched(kOp, varlen::unpad_gather(mask_bytes, batch, seqlen, ws, total, x.data_ptr(), row_bytes(x, 2),
                                           static_cast<int64_t*>(indices.data_ptr()), packed.data_ptr(), stream));
  return {packed, indices, cu, max_seqlen};
}

Tensor pad_cuda(Tensor x_packed, Tensor indices, int64_t batch, int64_t seqlen) {
  constexpr const char* kOp = "attnx::pad";
  STD_TORCH_CHECK(x_packed.is_cuda() && x_packed.dim() >= 1, kOp,
                  ": argument 'x_packed' must be a CUDA tensor [T, ...]; got shape ", shape_str(x_packed));
  STD_TORCH_CHECK(indices.is_cuda() && indices.get_device_index() == x_packed.get_device_index(), kOp,
                  ": argument 'indices' must be on the device of 'x_packed'");
  const auto idx_type = indices.scalar_type();
  STD_TORCH_CHECK((idx_type == ScalarType::Long || idx_type == ScalarType::Int) && indices.dim() == 1 &&
                      indices.size(0) == x_packed.size(0),
                  kOp, ": argument 'indices' must be int64 or int32 [T] with T = ", x_packed.size(0),
                  " (the rows of 'x_packed'); got shape ", shape_str(indices));
  STD_TORCH_CHECK(batch >= 0 && seqlen >= 0, kOp, ": arguments 'batch' and 'seqlen' must be >= 0; got ", batch, ", ",
                  seqlen);
  const int64_t rows = batch * seqlen;
  STD_TORCH_CHECK(rows < (int64_t(1) << 31) && x_packed.size(0) < (int64_t(1) << 31), kOp,
                  ": batch * seqlen = ", rows, " and T = ", x_packed.size(0), "; allowed: below 2^31");
  torch::stable::accelerator::DeviceGuard guard(x_packed.get_device_index());
  x_packed = torch::stable::contiguous(x_packed);
  indices = torch::stable::contiguous(indices);
  std::vector<int64_t> shape{batch, seqlen};
  for (int64_t i = 1; i < x_packed.dim(); ++i) shape.push_back(x_packed.size(i));
  Tensor out = torch::stable::new_empty(x_packed, shape);
  Tensor inverse = torch::stable::new_empty(x_packed, {std::max<int64_t>(rows, 1)}, ScalarType::Int);
  check_launched(kOp, varlen::pad_scatter(x_packed.data_ptr(), indices.data_ptr(), idx_type == ScalarType::Long,
                                          x_packed.size(0), rows, row_bytes(x_packed, 1),
                                          static_cast<int32_t*>(inverse.data_ptr()), out.data_ptr(),
                                          static_cast<cudaStream_t>(current_stream(kOp, x_packed))));
  return out;
}

}  // namespace
}  // namespace attnx::binding

STABLE_TORCH_LIBRARY_IMPL(attnx, CUDA, m) {
  m.impl("unpad", TORCH_BOX(&attnx::binding::unpad_cuda));
  m.impl("pad", TORCH_BOX(&attnx::binding::pad_cuda));
}

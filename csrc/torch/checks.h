// Argument checks of the stable-ABI bindings: each failure names the op, the argument, what was
// given and what is allowed, and reaches Python as a RuntimeError.
#pragma once

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

#include <string>
#include <vector>

namespace attnx::binding {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

// The sizes of t without its last drop_last dims.
inline std::vector<int64_t> sizes(const Tensor& t, int64_t drop_last = 0) {
  std::vector<int64_t> s;
  for (int64_t i = 0; i + drop_last < t.dim(); ++i) s.push_back(t.size(i));
  return s;
}

inline std::string shape_str(const Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

inline void check_cuda_16bit(const char* op, const char* arg, const Tensor& t, int64_t ndim) {
  STD_TORCH_CHECK(t.is_cuda(), op, ": argument '", arg, "' must be a CUDA tensor");
  STD_TORCH_CHECK(t.dim() == ndim, op, ": argument '", arg, "' has shape ", shape_str(t), "; expected rank ", ndim);
  const auto dt = t.scalar_type();
  STD_TORCH_CHECK(dt == ScalarType::Half || dt == ScalarType::BFloat16, op, ": argument '", arg,
                  "' has an unsupported dtype; allowed: float16, bfloat16");
  STD_TORCH_CHECK(t.numel() == 0 || t.stride(ndim - 1) == 1, op, ": argument '", arg,
                  "' needs a contiguous last dimension (stride 1)");
}

// TMA: base pointers 16-byte aligned, strides multiples of 16 bytes (8 elements).
inline void check_16b_aligned(const char* op, const char* arg, const Tensor& t) {
  bool ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t i = 0; i + 1 < t.dim(); ++i) ok = ok && (t.size(i) <= 1 || t.stride(i) % 8 == 0);
  STD_TORCH_CHECK(ok, op, ": argument '", arg,
                  "' must be 16-byte aligned with strides that are multiples of 8 elements (call .contiguous())");
}

}  // namespace attnx::binding

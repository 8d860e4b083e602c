// The query element types of the PQ kernels (pq_topk.cu, pq_scan.cu): conversion to float and
// the one dispatch from the runtime QType to a template argument.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../common/cuda_check.h"
#include "pq_params.h"

namespace attnx::pq {

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float(float x) { return x; }
template <>
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// f(QT{}) for the query type t: f's argument only carries the type.
template <class F>
Status with_q_type(QType t, F&& f) {
  switch (t) {
    case QType::kFloat16: return f(__half{});
    case QType::kBFloat16: return f(__nv_bfloat16{});
    case QType::kFloat32: return f(float{});
  }
  return Status::kUnsupported;
}

}  // namespace attnx::pq

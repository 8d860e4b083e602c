// Error plumbing for the torch-free kernel library: every entry point returns a Status.
#pragma once

#include <cuda_runtime.h>

namespace attnx {

enum class Status : int {
  kSuccess = 0,
  kUnsupported = 1,   // no kernel instance for this configuration
  kInvalidArgument = 2,
  kCudaError = 3,
};

inline const char* status_string(Status s) {
  switch (s) {
    case Status::kSuccess: return "success";
    case Status::kUnsupported: return "no kernel instance for this configuration";
    case Status::kInvalidArgument: return "invalid argument";
    case Status::kCudaError: return "CUDA error";
  }
  return "unknown";
}

}  // namespace attnx

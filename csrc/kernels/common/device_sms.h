// SM count of the current device, for grids sized to the machine (persistent kernels). Cached
// per device: the attribute query costs microseconds, which short launches notice.
#pragma once

#include <cuda_runtime.h>

namespace attnx {

inline cudaError_t current_device_sms(int& num_sms) {
  constexpr int kMaxDevices = 64;
  static int cached[kMaxDevices] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < kMaxDevices && cached[device] > 0) return num_sms = cached[device], cudaSuccess;
  err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
  // Two threads may both query the first time: the same value, so no harm.
  if (err == cudaSuccess && device < kMaxDevices) cached[device] = num_sms;
  return err;
}

}  // namespace attnx

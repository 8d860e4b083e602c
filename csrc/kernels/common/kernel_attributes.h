// Launch attributes of a kernel, set once per device. cudaFuncSetAttribute costs microseconds
// per call, which launches of a few tens of microseconds (decode steps, short varlen batches)
// notice when it runs on every call; the attributes stay set for the process.
#pragma once

#include <cuda_runtime.h>

namespace attnx {

class KernelAttributesOnce {
 public:
  // The dynamic shared memory a launch uses; with several resident CTAs per SM, the whole
  // shared-memory carveout too (the default carveout may fit fewer).
  template <class Kernel>
  cudaError_t set(Kernel kernel, int smem_bytes, bool max_carveout = false) {
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    if (device < kMaxDevices && done_[device]) return cudaSuccess;
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
    if (err == cudaSuccess && max_carveout)
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                 cudaSharedmemCarveoutMaxShared);
    // Two threads may both set them the first time: the same values, so no harm.
    if (err == cudaSuccess && device < kMaxDevices) done_[device] = true;
    return err;
  }

 private:
  static constexpr int kMaxDevices = 64;
  bool done_[kMaxDevices] = {};
};

}  // namespace attnx

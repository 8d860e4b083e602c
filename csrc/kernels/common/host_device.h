// ATTNX_HOST_DEVICE: helpers that host code (launchers, bindings compiled by the C++ compiler) and
// kernels both call.
#pragma once

#if defined(__CUDACC__)
#define ATTNX_HOST_DEVICE __host__ __device__
#else
#define ATTNX_HOST_DEVICE
#endif

// Named barriers (bar.sync / bar.arrive) for subsets of a block: warpgroups synchronise among
// themselves without stalling the producer. Id 0 is __syncthreads; ids below kFirstId are left
// to CUTLASS components.
#pragma once

namespace attnx {

struct NamedBarrier {
  static constexpr int kFirstId = 8;
  __device__ static void sync(int id, int num_threads) {
    asm volatile("bar.sync %0, %1;" ::"r"(kFirstId + id), "r"(num_threads) : "memory");
  }
  __device__ static void arrive(int id, int num_threads) {
    asm volatile("bar.arrive %0, %1;" ::"r"(kFirstId + id), "r"(num_threads) : "memory");
  }
};

}  // namespace attnx

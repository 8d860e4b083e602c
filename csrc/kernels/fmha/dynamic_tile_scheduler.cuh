// Dynamic tile scheduler of a persistent grid (one CTA per SM walking many work tiles).
//
// A CTA's first work tile is blockIdx.x; every further one comes from a global counter
// (atomicAdd, zeroed per call by the caller), so tiles start in launch order, like the hardware's
// block scheduler, and an SM that finishes early takes the next tile instead of idling on a
// static share (the static round-robin lost on uneven walks: docs/perf-notes.md). The producer
// thread fetches the next tile as it starts loading the current one and hands it to the
// consumers through two shared-memory slots, so the fetch latency is never on their path.
#pragma once

#include <cutlass/arch/barrier.h>

namespace attnx::fmha {

struct TileHandoffSmem {
  int tile[2];
  uint64_t full[2];   // the producer wrote tile[s]
  uint64_t empty[2];  // every consumer thread read it
};

template <int kNumConsumers>
struct DynamicTileScheduler {
  TileHandoffSmem* s;
  int* counter;
  int num_tiles;

  __device__ static void init(TileHandoffSmem* s) {
    for (int i = 0; i < 2; ++i) {
      cutlass::arch::ClusterBarrier::init(&s->full[i], 1);
      cutlass::arch::ClusterBarrier::init(&s->empty[i], kNumConsumers);
    }
  }

  // Producer: claim the tile after the current one and publish it as hand-off j (0, 1, ...).
  __device__ int publish_next(int j) const {
    const int next = atomicAdd(counter, 1) + (int)gridDim.x;
    const int slot = j & 1, use = j >> 1;
    if (use > 0) cutlass::arch::ClusterBarrier::wait(&s->empty[slot], (use - 1) & 1);
    s->tile[slot] = next;
    cutlass::arch::ClusterBarrier::arrive(&s->full[slot]);  // release: the store above is visible
    return next;
  }

  // Consumers: the tile of hand-off j.
  __device__ int receive_next(int j) const {
    const int slot = j & 1;
    cutlass::arch::ClusterBarrier::wait(&s->full[slot], (j >> 1) & 1);
    const int next = s->tile[slot];
    cutlass::arch::ClusterBarrier::arrive(&s->empty[slot]);
    return next;
  }
};

}  // namespace attnx::fmha

// The gathering side of the tiled sparse kernels (sparse_gather_fwd_kernel.cuh,
// sparse_gather_bwd_kernel.cuh): cp.async helpers, the walk over a tile's union chunks, the bit
// mask, the row map through the query order, and the producer loop that gathers each chunk's K/V
// rows and mask words.
//
// cp.async writes shared memory through the generic proxy and wgmma reads it through the async
// proxy: each producer thread waits for its own copies, fences (fence.proxy.async) and only then
// arrives on the stage's full barrier, so the consumers' wgmma see the bytes.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "sparse_gather_tile.cuh"
#include "sparse_params.h"

namespace attnx::sparse {

using namespace cute;

// 16 bytes global -> shared; a false `valid` writes zeros (padding rows must hold finite values:
// a masked score gives P = 0, and 0 * NaN would still poison O += P V).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}
// This thread's completed copies become visible to the async proxy (wgmma).
__device__ __forceinline__ void publish_to_async_proxy() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// 8 bytes global -> shared (a row's float2 statistics); cp.async.cg moves 16 bytes only.
__device__ __forceinline__ void cp_async_8(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 8 : 0));
}

// Row t of a swizzled shared-memory tile from a global row (zeros when !valid).
template <int kHeadDim, class SmemTile, class Element>
__device__ __forceinline__ void gather_row(SmemTile&& tile, int t, const Element* src, bool valid) {
  CUTLASS_PRAGMA_UNROLL
  for (int v = 0; v < kHeadDim / 8; ++v) cp_async_16(&tile(t, v * 8), src + v * 8, valid);
}

// The K/V pipelines of a tiled kernel, and the prologue's barrier: every producer thread arrives
// once per stage (after its own copies have landed), every consumer thread releases it. Call with
// all threads; __syncthreads follows in the caller.
template <class Traits>
__device__ typename Traits::Pipeline::Params gather_pipeline_params(typename Traits::SharedStorage& ss) {
  using Pipeline = typename Traits::Pipeline;
  typename Pipeline::Params pp;
  pp.role = threadIdx.x < 128 ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pp.producer_arv_count = 128;
  pp.consumer_arv_count = Traits::kNumMmaThreads;
  if (threadIdx.x == 0) cutlass::arch::ClusterBarrier::init(&ss.barrier_q, 128);
  return pp;
}

struct GatherWalk {
  int chunks;
  __device__ int count() const { return chunks; }
  __device__ int tile(int i) const { return i; }
};

// Bit c of row r in the chunk's slot: query r lists union key c.
// A thread's columns in a wgmma accumulator are its first column c0 = 2 * (lane % 4) plus
// offsets that do not depend on the thread (8 j + 0 or 1), so (off % 32) + c0 <= 25 + 6 < 32: the
// bit of column c0 + off is bit off % 32 of its word shifted right by c0. Each row's four words are
// shifted once and every column then tests a bit whose word and position the compiler knows (a
// per-column word select spilled 300 bytes in the backward, ptxas).
template <class Traits>
struct GatherBitMask {
  const uint32_t* slots;  // shared memory, [kMaskSlots][128 rows][4 words]
  __device__ bool tile_needs_mask(int, int) const { return true; }
  template <class TensorS, class TensorC>
  __device__ void apply(TensorS& s_rc, TensorC const& coord_rc, int, int chunk) const {
    const uint32_t* slot = slots + (chunk % Traits::kMaskSlots) * kGatherTileM * 4;
    const int c0 = get<1>(coord_rc(0, 0));
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < size<0>(s_rc); ++mi) {
      const uint4 w = *reinterpret_cast<const uint4*>(slot + get<0>(coord_rc(mi, 0)) * 4);
      const uint32_t words[4] = {w.x >> c0, w.y >> c0, w.z >> c0, w.w >> c0};
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < size<1>(s_rc); ++ni) {
        const int off = get<1>(coord_rc(0, ni)) - c0;  // bits c0 + off of the row: word off / 32
        if (((words[off >> 5] >> (off & 31)) & 1u) == 0u) s_rc(mi, ni) = -INFINITY;
      }
    }
  }
};

// Row r of the tile is query order[r] (rows past the tile's queries are not written).
template <typename Element>
struct GatherRowMap {
  Element* out;  // (batch, head) applied
  int64_t out_row_stride;
  float* lse;  // (batch, head) applied
  int lse_row_stride;
  const int* order;  // the tile's slice of query_order
  int rows, seqlen_q;
  __device__ int query(int r) const { return tile_query(order, r, seqlen_q); }
  __device__ bool valid(int r) const { return r < rows; }
  __device__ Element* out_row(int r) const { return out + int64_t(query(r)) * out_row_stride; }
  __device__ float* lse_row(int r) const { return lse + int64_t(query(r)) * lse_row_stride; }
};

// The producer warpgroup (thread t = 0..127), after the caller has committed its prologue group
// (the tile's query rows: Q, and for the backward dO and the rows' statistics): per chunk c the K
// and V rows of union key c * 128 + t and row t's mask words, into the pipeline's stages and
// mask slot c % kMaskSlots. The prologue is published on ss.barrier_q (128 arrivals).
// Copies are committed in groups prologue, K_0, V_0, K_1, ... and
// a group is published (waited, fenced, arrived on) once the group two after it is committed, so
// a chunk's gathers are in flight while the previous chunk's land. No deadlock: only acquiring a
// stage waits on the consumers, for chunk c the release of chunk c - kStages, which needs nothing
// after chunk c - kStages + 1 <= c - 1, and K_{c-1} is published before V_c's stage is acquired.
template <class Traits>
__device__ void sparse_gather_chunks(const SparseFwdParams& p, const GatherTile& tile, int union_count,
                                     typename Traits::SharedStorage& ss, typename Traits::Pipeline& pipe_k,
                                     typename Traits::Pipeline& pipe_v) {
  using Element = typename Traits::Element;
  using Pipeline = typename Traits::Pipeline;
  const int t = threadIdx.x;
  Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutKV{});

  const int hk = tile.h / (p.num_heads_q / p.num_heads_k);
  const Element* k_head = static_cast<const Element*>(p.k) + tile.b * p.k_batch_stride + hk * p.k_head_stride;
  const Element* v_head = static_cast<const Element*>(p.v) + tile.b * p.v_batch_stride + hk * p.v_head_stride;
  const int* keys = tile.keys;
  const uint32_t* masks = tile.masks;
  const int chunks = (union_count + kGatherTileN - 1) / kGatherTileN;

  auto write = cutlass::make_producer_start_state<Pipeline>();
  auto prev = write;
  int key = t < union_count ? keys[t] : -1;
  for (int c = 0; c < chunks; ++c) {
    const int next = (c + 1) * kGatherTileN + t;
    const int next_key = next < union_count ? keys[next] : -1;  // loads under this chunk's copies
    const bool valid = key >= 0;
    const int64_t row = valid ? key : 0;

    pipe_k.producer_acquire(write);
    gather_row<Traits::kHeadDim>(sK(_, _, write.index()), t, k_head + row * p.k_row_stride, valid);
    cp_async_16(ss.mask.data() + ((c % Traits::kMaskSlots) * kGatherTileM + t) * 4,
                masks + (int64_t(c) * kGatherTileM + t) * 4, true);
    cp_async_commit();  // K_c (with its mask words)
    cp_async_wait<2>();  // all but {V_{c-1}, K_c} (or {prologue, K_0}) have landed
    if (c > 0) {
      publish_to_async_proxy();
      pipe_k.producer_commit(prev);  // K_{c-1}
    }

    pipe_v.producer_acquire(write);
    gather_row<Traits::kHeadDim>(sV(_, _, write.index()), t, v_head + row * p.v_row_stride, valid);
    cp_async_commit();  // V_c
    cp_async_wait<2>();  // all but {K_c, V_c} have landed
    publish_to_async_proxy();
    if (c > 0) {
      pipe_v.producer_commit(prev);  // V_{c-1}
    } else {
      cutlass::arch::ClusterBarrier::arrive(&ss.barrier_q);  // the prologue
    }

    prev = write;
    ++write;
    key = next_key;
  }
  if (chunks > 0) {
    cp_async_wait<1>();
    publish_to_async_proxy();
    pipe_k.producer_commit(prev);
    cp_async_wait<0>();
    publish_to_async_proxy();
    pipe_v.producer_commit(prev);
  }
}

}  // namespace attnx::sparse

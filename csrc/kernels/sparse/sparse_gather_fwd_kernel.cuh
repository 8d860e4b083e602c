// Tiled sparse forward on the Hopper FMHA core: one CTA per tile of 128 ordered queries
// (p.query_order groups queries whose lists overlap), which runs the dense forward's consumers
// (fmha_fwd_mma, fmha_fwd_store) over the union of the tile's lists instead of a KV range:
//
//   iteration space  GatherWalk: chunks of 128 union keys (sparse_tile_union.cu wrote the union);
//   masking          GatherBitMask: score (r, c) survives when query r lists union key c (bits
//                    the pre-pass wrote, staged in shared memory with the chunk's K);
//   addressing       the producer warpgroup gathers Q rows by the order and K/V rows by the union
//                    with cp.async (one thread per row); the epilogue writes rows by the order.
//
// Why: per-query gathers (sparse_fwd_kernel.cuh) read every listed K/V row once per query from L2
// and run on CUDA cores; queries grouped by similar lists share most of their keys, so a tile
// reads its union once into shared memory and its scores run on tensor cores. The price is the
// masked-out pairs inside the union (docs/perf-notes.md).
//
// cp.async writes shared memory through the generic proxy and wgmma reads it through the async
// proxy: each producer thread waits for its own copies, fences (fence.proxy.async) and only then
// arrives on the stage's full barrier, so the consumers' wgmma see the bytes.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "../fmha/fmha_fwd_epilogue.cuh"
#include "../fmha/fmha_fwd_mainloop.cuh"
#include "sparse_gather_traits.h"
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

struct GatherWalk {
  int chunks;
  __device__ int count() const { return chunks; }
  __device__ int tile(int i) const { return i; }
};

// Bit c of row r in the chunk's slot: query r lists union key c.
template <class Traits>
struct GatherBitMask {
  const uint32_t* slots;  // shared memory, [kMaskSlots][128 rows][4 words]
  __device__ bool tile_needs_mask(int, int) const { return true; }
  template <class TensorS, class TensorC>
  __device__ void apply(TensorS& s_rc, TensorC const& coord_rc, int, int chunk) const {
    const uint32_t* slot = slots + (chunk % Traits::kMaskSlots) * kGatherTileM * 4;
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < size<0>(s_rc); ++mi) {
      const uint4 w = *reinterpret_cast<const uint4*>(slot + get<0>(coord_rc(mi, 0)) * 4);
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < size<1>(s_rc); ++ni) {
        const int c = get<1>(coord_rc(0, ni));
        const uint32_t word = (c & 64) ? ((c & 32) ? w.w : w.z) : ((c & 32) ? w.y : w.x);
        if (((word >> (c & 31)) & 1u) == 0u) s_rc(mi, ni) = -INFINITY;
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
  __device__ int query(int r) const { return min(max(order[r], 0), seqlen_q - 1); }
  __device__ bool valid(int r) const { return r < rows; }
  __device__ Element* out_row(int r) const { return out + int64_t(query(r)) * out_row_stride; }
  __device__ float* lse_row(int r) const { return lse + int64_t(query(r)) * lse_row_stride; }
};

// The producer warpgroup (thread t = 0..127): Q row t, then per chunk c the K and V rows of union
// key c * 128 + t and row t's mask words. Copies are committed in groups Q, K_0, V_0, K_1, ... and
// a group is published (waited, fenced, arrived on) once the group two after it is committed, so
// a chunk's gathers are in flight while the previous chunk's land. No deadlock: only acquiring a
// stage waits on the consumers, for chunk c the release of chunk c - kStages, which needs nothing
// after chunk c - kStages + 1 <= c - 1, and K_{c-1} is published before V_c's stage is acquired.
template <class Traits>
__device__ void sparse_gather_load(const SparseFwdParams& p, const SparseGatherWorkspace& ws,
                                   typename Traits::SharedStorage& ss, typename Traits::Pipeline& pipe_k,
                                   typename Traits::Pipeline& pipe_v, int64_t tile, int max_chunks,
                                   const int* order, int rows, int union_count, int b, int h) {
  using Element = typename Traits::Element;
  using Pipeline = typename Traits::Pipeline;
  constexpr int kVecs = Traits::kHeadDim / 8;  // 16-byte pieces per row
  const int t = threadIdx.x;
  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutKV{});

  {
    const bool valid = t < rows;
    const int i = valid ? min(max(order[t], 0), p.seqlen_q - 1) : 0;
    const Element* src = static_cast<const Element*>(p.q) + b * p.q_batch_stride + int64_t(i) * p.q_row_stride +
                         h * p.q_head_stride;
    CUTLASS_PRAGMA_UNROLL
    for (int v = 0; v < kVecs; ++v) cp_async_16(&sQ(t, v * 8), src + v * 8, valid);
    cp_async_commit();
  }

  const int hk = h / (p.num_heads_q / p.num_heads_k);
  const Element* k_head = static_cast<const Element*>(p.k) + b * p.k_batch_stride + hk * p.k_head_stride;
  const Element* v_head = static_cast<const Element*>(p.v) + b * p.v_batch_stride + hk * p.v_head_stride;
  const int* keys = ws.union_keys + tile * max_chunks * kGatherTileN;
  const uint32_t* masks = ws.masks + tile * max_chunks * kGatherTileM * 4;
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
    const Element* k_src = k_head + row * p.k_row_stride;
    CUTLASS_PRAGMA_UNROLL
    for (int v = 0; v < kVecs; ++v) cp_async_16(&sK(t, v * 8, write.index()), k_src + v * 8, valid);
    cp_async_16(ss.mask.data() + ((c % Traits::kMaskSlots) * kGatherTileM + t) * 4,
                masks + (int64_t(c) * kGatherTileM + t) * 4, true);
    cp_async_commit();  // K_c (with its mask words)
    cp_async_wait<2>();  // all but {V_{c-1}, K_c} (or {Q, K_0}) have landed
    if (c > 0) {
      publish_to_async_proxy();
      pipe_k.producer_commit(prev);  // K_{c-1}
    }

    pipe_v.producer_acquire(write);
    const Element* v_src = v_head + row * p.v_row_stride;
    CUTLASS_PRAGMA_UNROLL
    for (int v = 0; v < kVecs; ++v) cp_async_16(&sV(t, v * 8, write.index()), v_src + v * 8, valid);
    cp_async_commit();  // V_c
    cp_async_wait<2>();  // all but {K_c, V_c} have landed
    publish_to_async_proxy();
    if (c > 0) {
      pipe_v.producer_commit(prev);  // V_{c-1}
    } else {
      cutlass::arch::ClusterBarrier::arrive(&ss.barrier_q);  // Q
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

template <class Traits>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    sparse_gather_fwd_kernel(const __grid_constant__ SparseFwdParams p, int max_chunks) {
  using Element = typename Traits::Element;
  using Pipeline = typename Traits::Pipeline;
  extern __shared__ char smem_buf[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem_buf);
  const SparseGatherWorkspace ws = SparseGatherWorkspace::carve(p);

  const int m = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t bh = int64_t(b) * p.num_heads_q + h;
  const int64_t tile = bh * gridDim.x + m;  // the pre-pass's tile numbering
  const int* order = p.query_order + bh * p.seqlen_q + m * kGatherTileM;
  const int rows = min(kGatherTileM, p.seqlen_q - m * kGatherTileM);
  const int union_count = ws.union_count[tile];
  const GatherWalk walk{(union_count + kGatherTileN - 1) / kGatherTileN};

  const int wg = threadIdx.x / 128;
  typename Pipeline::Params pp;
  pp.role = wg == 0 ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pp.producer_arv_count = 128;
  pp.consumer_arv_count = Traits::kNumMmaThreads;
  if (threadIdx.x == 0) cutlass::arch::ClusterBarrier::init(&ss.barrier_q, 128);
  Pipeline pipe_k(ss.pipeline_k, pp);
  Pipeline pipe_v(ss.pipeline_v, pp);
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  if (wg == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (walk.count() > 0)
      sparse_gather_load<Traits>(p, ws, ss, pipe_k, pipe_v, tile, max_chunks, order, rows, union_count, b, h);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int mma_tid = threadIdx.x - 128;
    typename Traits::TiledMmaPV mma_pv;
    Tensor tOrO = partition_fragment_C(mma_pv, select<0, 1>(typename Traits::TileShapePV{}));
    fmha::OnlineSoftmax<2> softmax(p.scale);
    if (walk.count() > 0) {
      const GatherBitMask<Traits> mask{ss.mask.data()};
      typename Traits::PipelineState read;  // stage 0, phase 0
      fmha::fmha_fwd_mma<Traits>(ss, pipe_k, pipe_v, mask, m, walk, mma_tid, tOrO, softmax, read);
    } else {
      clear(tOrO);  // no key listed in the whole tile: zeros and lse = -inf
    }
    const GatherRowMap<Element> row_map{static_cast<Element*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride,
                                        p.o_row_stride,
                                        p.lse + int64_t(b) * p.seqlen_q * p.num_heads_q + h,
                                        p.num_heads_q,
                                        order,
                                        rows,
                                        p.seqlen_q};
    fmha::fmha_fwd_store<Traits>(ss.q.data(), tOrO, softmax, row_map, mma_tid);
  }
}

}  // namespace attnx::sparse

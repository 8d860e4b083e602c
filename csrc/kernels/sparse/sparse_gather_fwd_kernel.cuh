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
// The producer's gathers: sparse_gather_load.cuh.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "../fmha/fmha_fwd_epilogue.cuh"
#include "../fmha/fmha_fwd_mainloop.cuh"
#include "sparse_gather_load.cuh"
#include "sparse_gather_traits.h"
#include "sparse_params.h"

namespace attnx::sparse {

using namespace cute;

template <class Traits>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    sparse_gather_fwd_kernel(const __grid_constant__ SparseFwdParams p) {
  using Element = typename Traits::Element;
  using Pipeline = typename Traits::Pipeline;
  extern __shared__ char smem_buf[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem_buf);
  const GatherTile tile(p, SparseGatherWorkspace::carve(p));
  const int union_count = *tile.union_count;
  const GatherWalk walk{(union_count + kGatherTileN - 1) / kGatherTileN};

  const auto pp = gather_pipeline_params<Traits>(ss);
  Pipeline pipe_k(ss.pipeline_k, pp);
  Pipeline pipe_v(ss.pipeline_v, pp);
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  if (threadIdx.x < 128) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (walk.count() > 0) {
      const int t = threadIdx.x;  // Q row t of the tile
      const Element* q_row = static_cast<const Element*>(p.q) + tile.b * p.q_batch_stride +
                             int64_t(tile_query(tile.order, t < tile.rows ? t : 0, p.seqlen_q)) * p.q_row_stride +
                             tile.h * p.q_head_stride;
      gather_row<Traits::kHeadDim>(make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{}), t,
                                   q_row, t < tile.rows);
      cp_async_commit();
      sparse_gather_chunks<Traits>(p, tile, union_count, ss, pipe_k, pipe_v);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int mma_tid = threadIdx.x - 128;
    typename Traits::TiledMmaPV mma_pv;
    Tensor tOrO = partition_fragment_C(mma_pv, select<0, 1>(typename Traits::TileShapePV{}));
    fmha::OnlineSoftmax<2> softmax(p.scale);
    if (walk.count() > 0) {
      const GatherBitMask<Traits> mask{ss.mask.data()};
      typename Traits::PipelineState read;  // stage 0, phase 0
      fmha::fmha_fwd_mma<Traits>(ss, pipe_k, pipe_v, mask, tile.m, walk, mma_tid, tOrO, softmax, read);
    } else {
      clear(tOrO);  // no key listed in the whole tile: zeros and lse = -inf
    }
    const GatherRowMap<Element> row_map{
        static_cast<Element*>(p.out) + tile.b * p.o_batch_stride + tile.h * p.o_head_stride,
        p.o_row_stride,
        p.lse + int64_t(tile.b) * p.seqlen_q * p.num_heads_q + tile.h,
        p.num_heads_q,
        tile.order,
        tile.rows,
        p.seqlen_q};
    fmha::fmha_fwd_store<Traits>(ss.q.data(), tOrO, softmax, row_map, mma_tid);
  }
}

}  // namespace attnx::sparse

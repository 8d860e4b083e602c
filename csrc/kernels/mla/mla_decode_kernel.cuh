// Hopper MLA decode: one CTA per (64-row query block, split part, KV head), warp-specialised.
//
//   warpgroup 0 (producer): one thread walks the part's pages through the block table and issues
//                           one TMA load per page; the warpgroup gives its registers away.
//   warpgroups 1, 2 (consumers): per piece, load the query block, run the mainloop
//                           (mla_decode_mainloop.cuh), write the final or partial result.
// grid.x walks the query blocks fastest: the blocks of one part stream the same pages at the
// same time and share them in L2.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "mla_decode_epilogue.cuh"
#include "mla_decode_mainloop.cuh"

namespace attnx::mla {

template <class Traits>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    mla_decode_kernel(const __grid_constant__ MlaDecodeKernelParams<Traits> kp) {
  using Pipeline = typename Traits::Pipeline;
  extern __shared__ char smem_buf[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem_buf);
  const MlaDecodeParams& p = kp.p;
  const int m_block = blockIdx.x, part = blockIdx.y, head_k = blockIdx.z;

  typename Pipeline::Params pp;
  pp.transaction_bytes = Traits::kTmaBytesPage;
  pp.role = threadIdx.x < 128 ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pp.is_leader = threadIdx.x == 0;
  pp.num_consumers = Traits::kNumMmaThreads;
  Pipeline pipe(ss.pipeline, pp, Shape<_1, _1, _1>{});
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  if (threadIdx.x < 128) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x == 0) {
      cute::prefetch_tma_descriptor(kp.tma_kv.get_tma_descriptor());
      mla_decode_load<Traits>(kp, ss, pipe, part, head_k);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int mma_tid = threadIdx.x - 128;
    typename Traits::TiledMmaPV mma_pv;
    Tensor tOrO = partition_fragment_C(mma_pv, Shape<_64, Int<Traits::kHalfV>>{});
    MlaSoftmax softmax(p.scale);
    typename Traits::PipelineState read;
    MlaSplitWalk walk(p, part);
    MlaPiece piece;
    while (walk.next(piece)) {
      if (piece.token_end > piece.token_begin) {
        mla_load_q<Traits>(p, ss, piece.batch, head_k, m_block, mma_tid);
        mla_decode_mma<Traits>(p, ss, pipe, read, piece, m_block, mma_tid, tOrO, softmax);
      } else {
        clear(tOrO);
        softmax.reset();
      }
      mla_decode_store<Traits>(p, ss, tOrO, softmax, piece, head_k, m_block, mma_tid);
    }
  }
}

}  // namespace attnx::mla

// Forward fused MHA, sm80-style mainloop (cp.async + ldmatrix + mma.sync), run on Hopper.
//
// One CTA computes one kBlockM-row Q tile of one (batch, head): Q stays in registers, K and V
// tiles stream through shared memory, and S / P never leave registers. Loads overlap compute:
// V_n is in flight while S_n = Q K_n^T and its softmax run, and K_{n+1} while O += P_n V_n.
// This is the seed of the shared core; the Hopper mainloop (TMA + wgmma, warp-specialised)
// replaces the producer/consumer parts and keeps the same params, mask and epilogue contract.
#pragma once

#include "fmha_fwd_epilogue.cuh"
#include "fmha_fwd_traits.h"
#include "fmha_mask.cuh"
#include "fmha_params.h"
#include "online_softmax.cuh"
#include "smem_tile.cuh"
#include "warp_mma.cuh"

namespace attnx::fmha {

template <typename Traits>
__global__ void __launch_bounds__(Traits::kNumThreads) fmha_fwd_kernel(const FmhaFwdParams p) {
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kD = Traits::kHeadDim;
  constexpr int kThreads = Traits::kNumThreads;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  Element* sQ = reinterpret_cast<Element*>(smem_raw);
  Element* sK = sQ + kBlockM * kD;
  Element* sV = sK + kBlockN * kD;

  const int m_block = blockIdx.x, head = blockIdx.y, batch = blockIdx.z;
  const int head_k = head / (p.num_heads_q / p.num_heads_k);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int m0 = m_block * kBlockM;

  const auto* q = static_cast<const Element*>(p.q) + batch * p.q_batch_stride + head * p.q_head_stride;
  const auto* k = static_cast<const Element*>(p.k) + batch * p.k_batch_stride + head_k * p.k_head_stride;
  const auto* v = static_cast<const Element*>(p.v) + batch * p.v_batch_stride + head_k * p.v_head_stride;
  auto* o = static_cast<Element*>(p.out) + batch * p.o_batch_stride + head * p.o_head_stride;
  float* lse = p.lse + (int64_t)batch * p.seqlen_q * p.num_heads_q + head;
  const int64_t lse_row_stride = p.num_heads_q;

  const DenseCausalMask<kBlockM, kBlockN> mask{p.seqlen_q, p.seqlen_k, p.causal};
  const int n_blocks = mask.n_block_end(m0);
  const int rows[2] = {m0 + warp * 16 + lane / 4, m0 + warp * 16 + lane / 4 + 8};

  float acc_o[Traits::kNTilesO][4];
#pragma unroll
  for (int d = 0; d < Traits::kNTilesO; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_o[d][e] = 0.f;
  OnlineSoftmax<Traits::kNTilesS, Traits::kNTilesO> softmax;
  softmax.init();

  if (n_blocks > 0) {
    load_tile_async<kBlockM, kD, kThreads>(sQ, q, p.q_row_stride, m0, p.seqlen_q);
    load_tile_async<kBlockN, kD, kThreads>(sK, k, p.k_row_stride, 0, p.seqlen_k);
    cute::cp_async_fence();
  }
  uint32_t q_frag[Traits::kKStepsQK][4];
  const float scale_log2 = p.scale * float(M_LOG2E);

  for (int n = 0; n < n_blocks; ++n) {
    const int n0 = n * kBlockN;
    cute::cp_async_wait<0>();
    __syncthreads();  // K_n (and Q) landed; every warp is done reading V_{n-1}
    load_tile_async<kBlockN, kD, kThreads>(sV, v, p.v_row_stride, n0, p.seqlen_k);
    cute::cp_async_fence();
    if (n == 0) load_q_fragments<Traits>(sQ, warp, lane, q_frag);

    float s[Traits::kNTilesS][4];
    gemm_qk<Traits>(q_frag, sK, lane, s);
#pragma unroll
    for (int j = 0; j < Traits::kNTilesS; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] *= scale_log2;
    if (mask.needs_mask(m0, n0)) mask.apply(s, rows, n0, lane);
    softmax.update(s, acc_o);

    cute::cp_async_wait<0>();
    __syncthreads();  // V_n landed; every warp is done reading K_n
    if (n + 1 < n_blocks) {
      load_tile_async<kBlockN, kD, kThreads>(sK, k, p.k_row_stride, n0 + kBlockN, p.seqlen_k);
      cute::cp_async_fence();
    }
    gemm_pv<Traits>(s, sV, lane, acc_o);
  }

  float inv_l[2], row_lse[2];
  softmax.finalize(inv_l, row_lse);
  store_output<Traits>(acc_o, inv_l, row_lse, o, p.o_row_stride, lse, lse_row_stride, rows, p.seqlen_q, lane);
}

}  // namespace attnx::fmha

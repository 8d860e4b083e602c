// Consumer side: per-warp tensor-core products of the mainloop (mma.sync m16n8k16, fp32 accumulate).
//
// Fragment layouts (PTX ISA, m16n8k16): lane = 4 * g + t. A regs hold rows {g, g+8} x cols
// {2t, 2t+1} and {2t+8, 2t+9}; B regs hold k {2t, 2t+1} and {2t+8, 2t+9} at column n = g; the
// accumulator holds rows {g, g+8} x cols {2t, 2t+1}. The accumulator of S for two adjacent n8
// tiles is exactly the A fragment of P for one k16 step, so P never leaves registers.
#pragma once

#include <cute/arch/copy_sm75.hpp>

#include "smem_tile.cuh"

namespace attnx::fmha {

template <int kHeadDim, typename Element>
__device__ __forceinline__ void ldsm_x4(const Element* smem, int row, int col, uint32_t (&r)[4]) {
  cute::SM75_U32x4_LDSM_N::copy(*reinterpret_cast<const cute::uint128_t*>(smem + swizzled_offset<kHeadDim>(row, col)),
                                r[0], r[1], r[2], r[3]);
}

template <int kHeadDim, typename Element>
__device__ __forceinline__ void ldsm_x4_trans(const Element* smem, int row, int col, uint32_t (&r)[4]) {
  cute::SM75_U16x8_LDSM_T::copy(*reinterpret_cast<const cute::uint128_t*>(smem + swizzled_offset<kHeadDim>(row, col)),
                                r[0], r[1], r[2], r[3]);
}

// The warp's 16 rows of Q as A fragments for every k16 step of the head dim.
template <typename Traits>
__device__ __forceinline__ void load_q_fragments(const typename Traits::Element* sQ, int warp, int lane,
                                                 uint32_t (&q_frag)[Traits::kKStepsQK][4]) {
  const int mat = lane >> 3;
  const int row = warp * 16 + (lane & 7) + 8 * (mat & 1);
#pragma unroll
  for (int kk = 0; kk < Traits::kKStepsQK; ++kk) ldsm_x4<Traits::kHeadDim>(sQ, row, kk * 16 + 8 * (mat >> 1), q_frag[kk]);
}

// S (16 x kBlockN) = Q (16 x D) . K^T, K tile in smem as [kBlockN][D].
template <typename Traits>
__device__ __forceinline__ void gemm_qk(const uint32_t (&q_frag)[Traits::kKStepsQK][4], const typename Traits::Element* sK,
                                        int lane, float (&acc_s)[Traits::kNTilesS][4]) {
  using Mma = typename Traits::Ops::Mma;
  const int mat = lane >> 3;
#pragma unroll
  for (int j = 0; j < Traits::kNTilesS; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_s[j][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < Traits::kKStepsQK; ++kk) {
#pragma unroll
    for (int jj = 0; jj < Traits::kNTilesS / 2; ++jj) {
      uint32_t b[4];  // b[0], b[1]: n tile 2jj; b[2], b[3]: n tile 2jj + 1
      ldsm_x4<Traits::kHeadDim>(sK, jj * 16 + (lane & 7) + 8 * (mat >> 1), kk * 16 + 8 * (mat & 1), b);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float* c = acc_s[2 * jj + h];
        Mma::fma(c[0], c[1], c[2], c[3], q_frag[kk][0], q_frag[kk][1], q_frag[kk][2], q_frag[kk][3], b[2 * h],
                 b[2 * h + 1], c[0], c[1], c[2], c[3]);
      }
    }
  }
}

// O (16 x D) += P (16 x kBlockN, from the S accumulator) . V, V tile in smem as [kBlockN][D].
template <typename Traits>
__device__ __forceinline__ void gemm_pv(const float (&p)[Traits::kNTilesS][4], const typename Traits::Element* sV,
                                        int lane, float (&acc_o)[Traits::kNTilesO][4]) {
  using Mma = typename Traits::Ops::Mma;
  using Ops = typename Traits::Ops;
  const int mat = lane >> 3;
#pragma unroll
  for (int kk = 0; kk < Traits::kKStepsPV; ++kk) {
    const uint32_t a0 = Ops::pack(p[2 * kk][0], p[2 * kk][1]);
    const uint32_t a1 = Ops::pack(p[2 * kk][2], p[2 * kk][3]);
    const uint32_t a2 = Ops::pack(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    const uint32_t a3 = Ops::pack(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
    for (int dd = 0; dd < Traits::kNTilesO / 2; ++dd) {
      uint32_t b[4];  // b[0], b[1]: d tile 2dd; b[2], b[3]: d tile 2dd + 1
      ldsm_x4_trans<Traits::kHeadDim>(sV, kk * 16 + (lane & 7) + 8 * (mat & 1), dd * 16 + 8 * (mat >> 1), b);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float* c = acc_o[2 * dd + h];
        Mma::fma(c[0], c[1], c[2], c[3], a0, a1, a2, a3, b[2 * h], b[2 * h + 1], c[0], c[1], c[2], c[3]);
      }
    }
  }
}

}  // namespace attnx::fmha

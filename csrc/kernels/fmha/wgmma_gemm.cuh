// Warpgroup GEMM issue and the register-layout views the attention mainloop needs.
//
// wgmma is asynchronous: operands in registers must be fenced before issue and after the wait,
// and a batch is committed so that warpgroup_wait<N> can let the newest N batches keep running
// (the forward overlaps S_{n+1} = Q K^T with O += P_n V).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_conversion.h>

namespace attnx::fmha {

using namespace cute;

// C (+)= A B over all K blocks of the fragments. kZeroInit starts from C = 0; kWait >= 0 waits
// until at most kWait committed batches are still running (-1: do not wait).
template <bool kZeroInit, int kWait, class TiledMma, class TensorA, class TensorB, class TensorC>
__device__ __forceinline__ void wgmma_gemm(TiledMma& tiled_mma, TensorA const& tA, TensorB const& tB, TensorC& tC) {
  // A is either smem descriptors (SS) or a register fragment (RS); registers need fencing.
  constexpr bool kARegs = !is_same_v<typename TensorA::engine_type::iterator, GMMA::DescriptorIterator>;
  if constexpr (kARegs) warpgroup_fence_operand(const_cast<TensorA&>(tA));
  warpgroup_fence_operand(tC);
  warpgroup_arrive();
  if constexpr (kZeroInit) tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
  CUTLASS_PRAGMA_UNROLL
  for (int kb = 0; kb < size<2>(tA); ++kb) {
    cute::gemm(tiled_mma, tA(_, _, kb), tB(_, _, kb), tC);
    tiled_mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  if constexpr (kWait >= 0) warpgroup_wait<kWait>();
  warpgroup_fence_operand(tC);
  if constexpr (kARegs) warpgroup_fence_operand(const_cast<TensorA&>(tA));
}

// An sm_90 accumulator fragment ((2, 2, N/8), MMA_M, MMA_N) seen as (rows, cols): per thread,
// value mode 0 steps one column, mode 1 eight rows, mode 2 eight columns.
template <class Layout>
__device__ __forceinline__ constexpr auto accumulator_rowcol(Layout l) {
  static_assert(decltype(rank(l))::value == 3 && decltype(rank(get<0>(l)))::value == 3);
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<0, 2>(l), get<2>(l)));
}

// The same accumulator seen as the register A operand of a 16-bit wgmma with K = the
// accumulator's columns: one K block of 16 holds two of its 8-column chunks, in the value order
// wgmma expects for A (column pair, row half, chunk). So P never moves between registers.
template <class Layout>
__device__ __forceinline__ constexpr auto accumulator_as_a_operand(Layout l) {
  auto chunks = logical_divide(get<0, 2>(l), Tile<_2>{});  // ((2, N/16))
  return make_layout(make_layout(get<0, 0>(l), get<0, 1>(l), get<0, 0>(chunks)), get<1>(l),
                     coalesce(make_layout(get<0, 1>(chunks), get<2>(l))));
}

// Element-wise conversion of a register fragment (packed conversions where the types allow) into
// a new fragment seen through `layout` (a view of the same register order, e.g. the A operand).
template <typename To, class Tensor, class Layout>
__device__ __forceinline__ auto convert_fragment(Tensor const& t, Layout layout) {
  using From = typename Tensor::value_type;
  constexpr int N = decltype(size(t))::value;
  static_assert(decltype(cosize(layout))::value == N);
  auto out = make_tensor<To>(layout);
  cutlass::NumericArrayConverter<To, From, N> convert;
  *reinterpret_cast<cutlass::Array<To, N>*>(out.data()) =
      convert(*reinterpret_cast<cutlass::Array<From, N> const*>(t.data()));
  return out;
}

}  // namespace attnx::fmha

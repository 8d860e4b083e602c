// Producer side of the sm80-style mainloop: swizzled shared-memory tiles filled by cp.async.
//
// A tile is rows x kHeadDim 16-bit elements, row-major in 16-byte chunks. Chunk c of row r is
// stored at chunk (c ^ (r % 8)): the 8 row addresses that one ldmatrix phase reads then hit 8
// different bank groups, so the fragment loads are conflict-free.
#pragma once

#include <cute/arch/copy_sm80.hpp>
#include <cute/numeric/int.hpp>

namespace attnx::fmha {

template <int kHeadDim>
__device__ __forceinline__ int swizzled_offset(int row, int col) {
  return row * kHeadDim + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

// Copies rows [row0, row0 + kRows) of a [L, kHeadDim] slice (row stride in elements) into a
// smem tile; rows at or past `num_rows` are zero-filled so masked lanes never read garbage.
template <int kRows, int kHeadDim, int kNumThreads, typename Element>
__device__ __forceinline__ void load_tile_async(Element* smem, const Element* gmem, int64_t row_stride, int row0,
                                                int num_rows) {
  constexpr int kChunksPerRow = kHeadDim / 8;
  constexpr int kChunks = kRows * kChunksPerRow;
  static_assert(kChunks % kNumThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int i = 0; i < kChunks / kNumThreads; ++i) {
    const int c = i * kNumThreads + threadIdx.x;
    const int r = c / kChunksPerRow;
    const int col = (c % kChunksPerRow) * 8;
    const bool valid = row0 + r < num_rows;
    const Element* src = gmem + (valid ? (int64_t)(row0 + r) * row_stride + col : 0);
    cute::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>::copy(
        *reinterpret_cast<const cute::uint128_t*>(src),
        *reinterpret_cast<cute::uint128_t*>(smem + swizzled_offset<kHeadDim>(r, col)), valid);
  }
}

}  // namespace attnx::fmha

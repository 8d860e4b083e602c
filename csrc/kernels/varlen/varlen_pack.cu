// unpad and pad as row copies (see varlen_pack_api.h).
//
// unpad: a counting kernel (one CTA per mask chunk) and a one-CTA scan give cu_seqlens, each
// chunk's packed offset and {T, max_seqlen}, which the host reads in one copy to allocate; an
// indexing kernel then writes the positions in order and a gather kernel copies the rows, one warp
// per row.
// pad: an inverse map (padded row -> packed row, -1 = none) lets one warp per *output* row write
// either its packed row or zeros, so every output byte is written once (zero-fill first and
// scatter after writes the token rows twice).
#include <cstdint>

#include "varlen_pack_api.h"

namespace attnx::varlen {
namespace {

constexpr int kCountThreads = 256;
constexpr int kPerThread = kMaskChunk / kCountThreads;  // mask bytes per thread, consecutive positions
constexpr int kScanThreads = 1024;
constexpr int kRowWarps = 8;  // rows copied per CTA at a time, one per warp

// Exclusive prefix sum over the CTA (blockDim.x a multiple of 32, at most 1024); *total gets the sum.
__device__ int block_exclusive_scan(int v, int* total) {
  __shared__ int warp_sums[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  int x = v;
  for (int d = 1; d < 32; d *= 2) {
    const int y = __shfl_up_sync(0xffffffffu, x, d);
    if (lane >= d) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int w = lane < warps ? warp_sums[lane] : 0;
    for (int d = 1; d < 32; d *= 2) {
      const int y = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += y;
    }
    warp_sums[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  const int before = (warp ? warp_sums[warp - 1] : 0) + x - v;
  *total = warp_sums[warps - 1];
  __syncthreads();  // warp_sums is reused by the next call
  return before;
}

// The kPerThread mask bytes of this thread in chunk (b, c), as token flags (bit i = position i).
__device__ unsigned chunk_flags(const uint8_t* mask, int64_t seqlen, int64_t b, int64_t c) {
  const int64_t first = c * kMaskChunk + int64_t(threadIdx.x) * kPerThread;
  const uint8_t* row = mask + b * seqlen;
  unsigned flags = 0;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    if (first + i < seqlen && row[first + i] != 0) flags |= 1u << i;
  }
  return flags;
}

__global__ void __launch_bounds__(kCountThreads) count_chunks_kernel(const uint8_t* mask, int64_t seqlen, int chunks,
                                                                      int32_t* counts) {
  const int64_t e = blockIdx.x, b = e / chunks, c = e % chunks;
  int total;
  block_exclusive_scan(__popc(chunk_flags(mask, seqlen, b, c)), &total);
  if (threadIdx.x == 0) counts[e] = total;
}

// One CTA: chunk counts -> packed offsets (in place), cu_seqlens, and {T, max_seqlen} for the host.
__global__ void __launch_bounds__(kScanThreads) scan_chunks_kernel(int32_t* offsets, int batch, int chunks,
                                                                    int32_t* cu_seqlens, int32_t* sizes) {
  const int64_t entries = int64_t(batch) * chunks;
  int carry = 0;
  for (int64_t base = 0; base < entries; base += kScanThreads) {
    const int64_t e = base + threadIdx.x;
    const int v = e < entries ? offsets[e] : 0;
    int tile_total;
    const int before = block_exclusive_scan(v, &tile_total);
    if (e < entries) offsets[e] = carry + before;
    carry += tile_total;
  }
  __syncthreads();  // this CTA's global writes above are visible to all its threads after the barrier
  int longest = 0;
  for (int b = threadIdx.x; b < batch; b += kScanThreads) {
    const int start = chunks ? offsets[int64_t(b) * chunks] : 0;
    const int end = b + 1 < batch && chunks ? offsets[int64_t(b + 1) * chunks] : carry;
    cu_seqlens[b] = start;
    longest = max(longest, end - start);
  }
  for (int d = 16; d >= 1; d /= 2) longest = max(longest, __shfl_xor_sync(0xffffffffu, longest, d));
  __shared__ int warp_max[32];
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = longest;
  __syncthreads();
  if (threadIdx.x == 0) {
    int m = 0;
    for (int w = 0; w < kScanThreads / 32; ++w) m = max(m, warp_max[w]);
    cu_seqlens[batch] = carry;
    sizes[0] = carry, sizes[1] = m;
  }
}

__global__ void __launch_bounds__(kCountThreads) index_chunks_kernel(const uint8_t* mask, int64_t seqlen, int chunks,
                                                                      const int32_t* offsets, int64_t* indices) {
  const int64_t e = blockIdx.x, b = e / chunks, c = e % chunks;
  const unsigned flags = chunk_flags(mask, seqlen, b, c);
  int total;
  int out = offsets[e] + block_exclusive_scan(__popc(flags), &total);
  const int64_t first = b * seqlen + c * kMaskChunk + int64_t(threadIdx.x) * kPerThread;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    if (flags & (1u << i)) indices[out++] = first + i;
  }
}

// One warp per destination row; Vec is the copy unit (row_bytes and both bases are multiples of it).
template <typename Vec>
__device__ void copy_row(const Vec* __restrict__ src, Vec* __restrict__ dst, int64_t vecs, int lane) {
#pragma unroll 4
  for (int64_t i = lane; i < vecs; i += 32) dst[i] = src[i];
}

template <typename Vec>
__device__ void zero_row(Vec* __restrict__ dst, int64_t vecs, int lane) {
  const Vec z{};
#pragma unroll 4
  for (int64_t i = lane; i < vecs; i += 32) dst[i] = z;
}

template <typename Vec>
__global__ void __launch_bounds__(kRowWarps * 32) gather_rows_kernel(const Vec* __restrict__ x,
                                                                      const int64_t* __restrict__ indices,
                                                                      int64_t total, int64_t vecs,
                                                                      Vec* __restrict__ packed) {
  const int64_t t = int64_t(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (t >= total) return;
  copy_row(x + indices[t] * vecs, packed + t * vecs, vecs, threadIdx.x % 32);
}

template <typename Index>
__global__ void invert_indices_kernel(const Index* __restrict__ indices, int64_t total, int64_t rows,
                                      int32_t* __restrict__ inverse) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= total) return;
  const int64_t r = static_cast<int64_t>(indices[t]);
  if (r >= 0 && r < rows) inverse[r] = static_cast<int32_t>(t);
}

template <typename Vec>
__global__ void __launch_bounds__(kRowWarps * 32) pad_rows_kernel(const Vec* __restrict__ packed,
                                                                   const int32_t* __restrict__ inverse, int64_t rows,
                                                                   int64_t vecs, Vec* __restrict__ out) {
  const int64_t r = int64_t(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (r >= rows) return;
  const int32_t t = inverse[r];
  if (t >= 0) {
    copy_row(packed + int64_t(t) * vecs, out + r * vecs, vecs, threadIdx.x % 32);
  } else {
    zero_row(out + r * vecs, vecs, threadIdx.x % 32);
  }
}

// The widest copy unit dividing the row size and both base addresses.
int copy_unit(int64_t row_bytes, const void* a, const void* b) {
  const uintptr_t bits = uintptr_t(row_bytes) | reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b);
  for (int unit = 16; unit > 1; unit /= 2) {
    if (bits % unit == 0) return unit;
  }
  return 1;
}

template <typename Launch>
Status with_copy_unit(int unit, Launch&& launch) {
  switch (unit) {
    case 16: launch(uint4{}); break;
    case 8: launch(uint2{}); break;
    case 4: launch(uint32_t{}); break;
    case 2: launch(uint16_t{}); break;
    default: launch(uint8_t{}); break;
  }
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

unsigned row_blocks(int64_t rows) { return static_cast<unsigned>((rows + kRowWarps - 1) / kRowWarps); }

}  // namespace

Status unpad_count(const uint8_t* mask, int64_t batch, int64_t seqlen, int32_t* workspace, int32_t* cu_seqlens,
                   int32_t* sizes, cudaStream_t stream) {
  if (batch < 0 || seqlen < 0 || batch * seqlen >= (int64_t(1) << 31)) return Status::kInvalidArgument;
  const int chunks = static_cast<int>(mask_chunks(seqlen));
  const int64_t entries = batch * chunks;
  if (entries > 0) count_chunks_kernel<<<static_cast<unsigned>(entries), kCountThreads, 0, stream>>>(mask, seqlen, chunks, workspace);
  scan_chunks_kernel<<<1, kScanThreads, 0, stream>>>(workspace, static_cast<int>(batch), chunks, cu_seqlens, sizes);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

Status unpad_gather(const uint8_t* mask, int64_t batch, int64_t seqlen, const int32_t* workspace, int64_t total,
                    const void* x, int64_t row_bytes, int64_t* indices, void* packed, cudaStream_t stream) {
  if (batch < 0 || seqlen < 0 || batch * seqlen >= (int64_t(1) << 31) || total < 0 || row_bytes < 0)
    return Status::kInvalidArgument;
  const int chunks = static_cast<int>(mask_chunks(seqlen));
  const int64_t entries = batch * chunks;
  if (entries == 0 || total == 0) return Status::kSuccess;
  index_chunks_kernel<<<static_cast<unsigned>(entries), kCountThreads, 0, stream>>>(mask, seqlen, chunks, workspace,
                                                                                     indices);
  if (row_bytes == 0) return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
  const int unit = copy_unit(row_bytes, x, packed);
  return with_copy_unit(unit, [&](auto vec) {
    using Vec = decltype(vec);
    gather_rows_kernel<Vec><<<row_blocks(total), kRowWarps * 32, 0, stream>>>(
        static_cast<const Vec*>(x), indices, total, row_bytes / unit, static_cast<Vec*>(packed));
  });
}

Status pad_scatter(const void* packed, const void* indices, bool indices_int64, int64_t total, int64_t rows,
                   int64_t row_bytes, int32_t* workspace, void* out, cudaStream_t stream) {
  if (total < 0 || rows < 0 || rows >= (int64_t(1) << 31) || total >= (int64_t(1) << 31) || row_bytes < 0)
    return Status::kInvalidArgument;
  if (rows == 0 || row_bytes == 0) return Status::kSuccess;
  if (cudaMemsetAsync(workspace, 0xff, rows * sizeof(int32_t), stream) != cudaSuccess) return Status::kCudaError;
  if (total > 0) {
    const unsigned blocks = static_cast<unsigned>((total + 255) / 256);
    if (indices_int64) {
      invert_indices_kernel<<<blocks, 256, 0, stream>>>(static_cast<const int64_t*>(indices), total, rows, workspace);
    } else {
      invert_indices_kernel<<<blocks, 256, 0, stream>>>(static_cast<const int32_t*>(indices), total, rows, workspace);
    }
  }
  const int unit = copy_unit(row_bytes, packed, out);
  return with_copy_unit(unit, [&](auto vec) {
    using Vec = decltype(vec);
    pad_rows_kernel<Vec><<<row_blocks(rows), kRowWarps * 32, 0, stream>>>(static_cast<const Vec*>(packed), workspace,
                                                                          rows, row_bytes / unit,
                                                                          static_cast<Vec*>(out));
  });
}

}  // namespace attnx::varlen

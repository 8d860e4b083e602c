// Torch-free entry points of unpad and pad: token rows moved between a padded batch [B, L, ...]
// and packed rows [T, ...]. Both are memory-bound copies; every row moves once, with the widest
// vector (up to 16 bytes) its size and base addresses allow.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common/cuda_check.h"

namespace attnx::varlen {

// Positions of the mask handled by one CTA of the counting and indexing kernels.
constexpr int64_t kMaskChunk = 2048;

inline int64_t mask_chunks(int64_t seqlen) { return (seqlen + kMaskChunk - 1) / kMaskChunk; }

// int32 scratch words unpad needs between its two steps: one packed offset per mask chunk.
inline int64_t unpad_workspace_words(int64_t batch, int64_t seqlen) { return batch * mask_chunks(seqlen); }

// Unpad, step 1. mask [batch, seqlen] bytes (non-zero = token), contiguous. Writes cu_seqlens
// [batch + 1] (int32), sizes[0] = T (the packed row count the caller allocates for) and sizes[1] =
// max_seqlen (device words next to each other: one small copy brings both to the host), and the
// packed offset of every mask chunk to workspace. batch * seqlen must be below 2^31.
Status unpad_count(const uint8_t* mask, int64_t batch, int64_t seqlen, int32_t* workspace, int32_t* cu_seqlens,
                   int32_t* sizes, cudaStream_t stream);

// Unpad, step 2. indices [T] (int64 positions in the flattened batch * seqlen axis, increasing)
// and packed [T, row_bytes] = the rows of x [batch * seqlen, row_bytes] the mask selects.
Status unpad_gather(const uint8_t* mask, int64_t batch, int64_t seqlen, const int32_t* workspace, int64_t total,
                    const void* x, int64_t row_bytes, int64_t* indices, void* packed, cudaStream_t stream);

// Pad: out [rows, row_bytes] receives packed row t at row indices[t] and zeros everywhere else.
// indices (int32 or int64, total entries) outside [0, rows) are skipped, so no value can make the
// kernels touch memory out of bounds; with repeated indices one of the rows wins. workspace: rows
// int32 words (the inverse map).
Status pad_scatter(const void* packed, const void* indices, bool indices_int64, int64_t total, int64_t rows,
                   int64_t row_bytes, int32_t* workspace, void* out, cudaStream_t stream);

}  // namespace attnx::varlen

// The tensor-core candidate scan of the PQ top-k selection (pq_scan.cu), as pq_topk.cu drives it.
//
// A query's PQ score against key j is q . k~_j, with k~_j the concatenation of key j's
// centroids, so a Q tile's scores against a tile of decoded keys are one small GEMM. The scan
// narrows each row to a short candidate list whose top k (by the scan's own scores) is the row's
// answer; rows it cannot settle are left to the LUT kernel's exact search (pq_topk.cu).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/cuda_check.h"
#include "pq_params.h"

namespace attnx::pq {

// Where the scan's working memory lies (carved from PqTopkParams::workspace).
struct PqScanWork {
  int dim_pad = 0;        // head dim rounded up to a kernel instance (64 or 128)
  int keys_pad = 0;       // Lk rounded up to the key tile
  int slots = 0;          // candidates kept per row
  int chunk_rows = 0;     // query rows per scan + finish round
  __half* keys_hi = nullptr;  // [B, H, keys_pad, dim_pad]: scaled decoded keys, fp16
  __half* keys_lo = nullptr;  // the rounding residue of keys_hi, fp16
  float* key_scale = nullptr;  // [H]: 2^-e, or 0 for a head with a non-finite centroid
  float* key_norm2 = nullptr;  // [B, H]: the largest squared scaled decoded key norm
  PqCandidate* cand = nullptr;  // [B, H, chunk_rows, slots]
  int* cand_count = nullptr;    // [B, H, chunk_rows]: candidates, or -1 where the row is not settled
};

// Whether a call runs the scan (long enough rows, Lk < 2^16 so 16-bit bin counts cannot wrap).
bool pq_scan_applies(const PqTopkParams& p, int slots);
// The workspace layout for p (bytes in total through `bytes`); pointers are offsets from base.
PqScanWork pq_scan_layout(const PqTopkParams& p, int slots, char* base, int64_t* bytes);
// Key scales and decoded keys: once per call.
Status pq_scan_prepare(const PqTopkParams& p, const PqScanWork& w, cudaStream_t stream);
// Candidates of query rows [row_begin, row_begin + w.chunk_rows) for every batch and head.
Status pq_scan_rows(const PqTopkParams& p, const PqScanWork& w, int row_begin, cudaStream_t stream);

}  // namespace attnx::pq

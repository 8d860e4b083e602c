// Where one (batch, head) problem lives: its row offset into the packed tensors and its lengths.
// Dense inputs use the batch coordinate of the TMA tensor; packed inputs have a batch of 1 and
// shift the row coordinate by cu_seqlens[b], so a tile never starts inside another sequence and
// rows past this sequence's end are masked (keys) or not stored (queries).
#pragma once

#include "fmha_params.h"

namespace attnx::fmha {

struct VarlenBlockInfo {
  int offset_q, offset_k;    // first row of this sequence in the packed tensors (0 when dense)
  int seqlen_q, seqlen_k;
  int tma_batch;             // batch coordinate of the TMA tensors

  __device__ VarlenBlockInfo(const FmhaFwdParams& p, int b) {
    if (p.cu_seqlens_q != nullptr) {
      // Clamped to the packed tensors: malformed cu_seqlens give wrong rows, never a stray access.
      offset_q = min(max(p.cu_seqlens_q[b], 0), p.total_q);
      seqlen_q = min(max(p.cu_seqlens_q[b + 1], offset_q), p.total_q) - offset_q;
      offset_k = min(max(p.cu_seqlens_k[b], 0), p.total_k);
      seqlen_k = min(max(p.cu_seqlens_k[b + 1], offset_k), p.total_k) - offset_k;
      tma_batch = 0;
    } else {
      offset_q = offset_k = 0, seqlen_q = p.seqlen_q, seqlen_k = p.seqlen_k;
      tma_batch = b;
    }
  }

  // Row offset of this sequence's first row in an output indexed [batch][row] (lse and out).
  __device__ long long out_row0(const FmhaFwdParams& p, int b) const {
    return p.cu_seqlens_q != nullptr ? (long long)offset_q : (long long)b * p.seqlen_q;
  }
};

}  // namespace attnx::fmha

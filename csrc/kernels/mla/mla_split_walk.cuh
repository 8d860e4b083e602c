// The walk over one split part's work: the (sequence, token range) pieces that the producer and
// the consumers of a CTA visit in the same order.
//
// A part covers a contiguous stretch of the batch's pages in sequence order (see
// mla_decode_metadata). Each piece is one sequence's share of that stretch; a sequence cut over
// several parts writes a partial result per piece (its split slot), merged by the combine kernel.
#pragma once

#include "mla_params.h"

namespace attnx::mla {

struct MlaPiece {
  int batch;
  int seqlen;       // the sequence's cache length, clamped to its block table's capacity
  int token_begin;  // page aligned
  int token_end;    // <= seqlen
  int slot;         // split slot of a partial result
  bool whole;       // the sequence has a single piece: write the final output directly
  __device__ int page_begin(int page_size) const { return token_begin / page_size; }
  __device__ int page_end(int page_size) const { return (token_end + page_size - 1) / page_size; }
};

class MlaSplitWalk {
 public:
  __device__ MlaSplitWalk(const MlaDecodeParams& p, int part) : p_(p) {
    const int* meta = p.tile_scheduler_metadata + part * kMetaStride;
    batch_ = meta[kBeginBatch], first_token_ = meta[kBeginToken];
    end_batch_ = meta[kEndBatch], end_token_ = meta[kEndToken];
    slot_ = meta[kBeginSlot];
    first_batch_ = batch_;
  }

  // The next piece, or false when the part is done. The end is exclusive: (end_batch, 0) takes
  // nothing of end_batch.
  __device__ bool next(MlaPiece& piece) {
    const int b = batch_;
    if (b >= p_.batch || b > end_batch_ || (b == end_batch_ && end_token_ <= 0)) return false;
    const int capacity = p_.max_pages * p_.page_size;
    const int seqlen = min(max(p_.cache_seqlens[b], 0), capacity);
    piece.batch = b;
    piece.seqlen = seqlen;
    piece.token_begin = min(b == first_batch_ ? first_token_ : 0, seqlen);
    piece.token_end = b == end_batch_ ? min(end_token_, seqlen) : seqlen;
    piece.token_end = max(piece.token_end, piece.token_begin);
    piece.slot = slot_;
    piece.whole = p_.num_splits[b + 1] - p_.num_splits[b] <= 1;
    ++batch_, ++slot_;
    return true;
  }

 private:
  const MlaDecodeParams& p_;
  int batch_, first_batch_, first_token_, end_batch_, end_token_, slot_;
};

}  // namespace attnx::mla

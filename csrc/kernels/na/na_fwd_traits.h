// Compile-time shape of the fused neighborhood-attention forward: the FMHA core's traits with
// 128-token Q and KV tiles (multi-dimensional tiles are powers of two per axis, so a tile's token
// count is one too), plus how a tile arrives by TMA.
#pragma once

#include "../fmha/fmha_fwd_traits.h"

namespace attnx::na {

// Head dims 32 and 64 are softmax-bound: two consumer warpgroups take turns (ping-pong), as in
// the dense core; head dim 128 runs them freely.
template <typename Element, int kHeadDim>
struct NaFwdConfig {
  using Traits = fmha::FmhaFwdTraits<Element, kHeadDim, 128, 128, 2, (kHeadDim < 128)>;
};

// A tile lands as head-dim chunks of kChunk elements, one TMA box each: (chunk, tile axis 2,
// axis 1, batch x axis 0, head). The chunk is the width of the shared-memory swizzle atom the
// core's wgmma layouts use (128-byte rows; 64 bytes at head dim 32), so each box fills one
// contiguous kBlock x kChunk slab of the K-major tile, swizzled exactly as the layout expects.
template <class Traits>
struct NaTmaBox {
  using Element = typename Traits::Element;
  static constexpr int kChunk = Traits::kHeadDim * (int)sizeof(Element) >= 128 ? 128 / (int)sizeof(Element)
                                                                               : Traits::kHeadDim;
  static constexpr int kChunks = Traits::kHeadDim / kChunk;
  static constexpr int kSwizzleBytes = kChunk * (int)sizeof(Element);
  static_assert(Traits::kHeadDim % kChunk == 0 && (kSwizzleBytes == 128 || kSwizzleBytes == 64),
                "head dims 32, 64, 128");
};

}  // namespace attnx::na

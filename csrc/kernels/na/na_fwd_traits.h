// Compile-time shape of the fused neighborhood-attention forward: the FMHA core's traits with
// 128-token Q and KV tiles (multi-dimensional tiles are powers of two per axis, so a tile's token
// count is one too). How a tile arrives: na_tma.cuh.
#pragma once

#include "../fmha/fmha_fwd_traits.h"

namespace attnx::na {

// Head dims 32 and 64 are softmax-bound: two consumer warpgroups take turns (ping-pong), as in
// the dense core; head dim 128 runs them freely.
template <typename Element, int kHeadDim>
struct NaFwdConfig {
  using Traits = fmha::FmhaFwdTraits<Element, kHeadDim, 128, 128, 2, (kHeadDim < 128)>;
};

}  // namespace attnx::na

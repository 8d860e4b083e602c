// Compile-time shape of the fused neighborhood-attention forward: the FMHA core's traits with
// 128-token (or 64-token) Q and KV tiles (multi-dimensional tiles are powers of two per axis, so a
// tile's token count is one too). How a tile arrives: na_tma.cuh.
#pragma once

#include "../fmha/fmha_fwd_traits.h"

namespace attnx::na {

// Head dims 32 and 64 are softmax-bound: two consumer warpgroups take turns (ping-pong), as in
// the dense core; head dim 128 runs them freely.
// ShortTraits: 64-token tiles, two CTAs resident per SM. The union of a smaller Q tile's windows
// wastes fewer keys (a 1-D kernel of 129 visits half the key slots at 64 tokens), and one CTA's
// start-up and epilogue overlap the other's GEMMs, but a 64 x 64 tile pair runs the tensor cores
// at a lower rate. na_fwd_tile_size (na_tile_choice.h) decides per problem.
template <typename Element, int kHeadDim>
struct NaFwdConfig {
  using Traits = fmha::FmhaFwdTraits<Element, kHeadDim, 128, 128, 2, (kHeadDim < 128)>;
  using ShortTraits = fmha::FmhaFwdTraits<Element, kHeadDim, 64, 64, 2, false, 2>;
};

}  // namespace attnx::na

// Compile-time shape of the fused neighborhood-attention backward: the FMHA core's backward
// traits (128-key CTA tiles, 64-query walked tiles, two Q/dO stages). How tiles arrive: na_tma.cuh.
#pragma once

#include "../fmha/fmha_bwd_traits.h"
#include "na_bwd_plan.h"

namespace attnx::na {

template <typename Element, int kHeadDim>
struct NaBwdConfig {
  // One staged dQ tile (the core's two plus the mask tables exceed the shared memory at D 128).
  using Traits = fmha::FmhaBwdTraits<Element, kHeadDim, kNaBwdKvTokens, 2, 1>;
  static_assert(Traits::kBlockM == kNaBwdQTokens, "the plan's Q tile is the core's");
};

}  // namespace attnx::na

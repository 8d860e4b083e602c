// The forward's tile configuration per head dim: which FmhaFwdTraits a call runs (one place;
// measurements in docs/perf-notes.md). Only the dense/packed/block-sparse launcher includes it.
#pragma once

#include "fmha_fwd_traits.h"

namespace attnx::fmha {

// Tile shapes per head dim (one place; measurements in docs/perf-notes.md). Head dim 64 is
// softmax-bound (the exponentials cost about as much as its GEMMs): three consumer warpgroups
// taking turns keep the tensor cores busy. Head dim 128 ran faster without the turns.
// Short problems (no sequence longer than kShortMaxSeqlen) walk a few KV tiles per CTA, and
// starting a CTA and writing its output cost about as much as its mainloop: ShortTraits runs
// 64-row CTAs, several resident per SM, so one CTA's start-up and epilogue overlap another's
// GEMMs (measured crossovers: about 2048 at head dim 64, between 512 and 1024 at 128).
template <typename Element, int kHeadDim>
struct FmhaFwdConfig;
template <typename Element>
struct FmhaFwdConfig<Element, 64> {
  using Traits = FmhaFwdTraits<Element, 64, 192, 128, 2, true>;
  using ShortTraits = FmhaFwdTraits<Element, 64, 64, 64, 2, false, 3>;
  static constexpr int kShortMaxSeqlen = 2048;
};
template <typename Element>
struct FmhaFwdConfig<Element, 128> {
  using Traits = FmhaFwdTraits<Element, 128, 128, 128, 2, false>;
  using ShortTraits = FmhaFwdTraits<Element, 128, 64, 64, 2, false, 2>;
  static constexpr int kShortMaxSeqlen = 512;
};

}  // namespace attnx::fmha

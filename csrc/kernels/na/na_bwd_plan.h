// Host-side plan of the neighborhood-attention backward, shared by every instance: the tile
// shapes and the workspace they imply. Compiled once (na_bwd_plan.cu).
#pragma once

#include <cstdint>

#include "../common/cuda_check.h"
#include "na_params.h"

namespace attnx::na {

// Tokens of the backward's tiles: a CTA's KV tile and the Q tiles it walks (the core's kBwdBlockM).
constexpr int kNaBwdKvTokens = 128;
constexpr int kNaBwdQTokens = 64;

// The tiles a problem runs with: p.q_tile / p.kv_tile when set, else the fewest visited pairs.
// kUnsupported for shapes the kernel cannot take (not powers of two, wrong token counts, or an
// axis-0 tile not dividing axis 0 when there are several batches).
Status na_bwd_tiles(const NaFwdParams& p, int (&q_tile)[kAxes], int (&kv_tile)[kAxes]);

// Q tiles per (batch, head) for these Q tile extents.
inline int64_t na_num_tiles(const NaFwdParams& p, const int (&tile)[kAxes]) {
  int64_t n = 1;
  for (int a = 0; a < kAxes; ++a) n *= (p.extent[a] + tile[a] - 1) / tile[a];
  return n;
}

}  // namespace attnx::na

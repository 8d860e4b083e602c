// Host-side plan of the neighborhood-attention backward (na_bwd_plan.h, na_api.h).
#include "na_api.h"
#include "na_bwd_plan.h"
#include "na_tile_choice.h"

namespace attnx::na {

namespace {
bool is_pow2_extent(int x) { return x > 0 && (x & (x - 1)) == 0; }
int tokens(const int (&t)[kAxes]) { return t[0] * t[1] * t[2]; }
}  // namespace

Status na_bwd_tiles(const NaFwdParams& p, int (&q_tile)[kAxes], int (&kv_tile)[kAxes]) {
  const bool given = p.q_tile[0] != 0 || p.q_tile[1] != 0 || p.q_tile[2] != 0 || p.kv_tile[0] != 0 ||
                     p.kv_tile[1] != 0 || p.kv_tile[2] != 0;
  if (given) {
    for (int a = 0; a < kAxes; ++a) q_tile[a] = p.q_tile[a], kv_tile[a] = p.kv_tile[a];
  } else {
    int log2_kv = 0, log2_q = 0;
    while ((1 << log2_kv) < kNaBwdKvTokens) ++log2_kv;
    while ((1 << log2_q) < kNaBwdQTokens) ++log2_q;
    na_choose_bwd_tiles(p, log2_kv, log2_q, kv_tile, q_tile);
  }
  for (int a = 0; a < kAxes; ++a)
    if (!is_pow2_extent(q_tile[a]) || !is_pow2_extent(kv_tile[a])) return Status::kUnsupported;
  if (tokens(q_tile) != kNaBwdQTokens || tokens(kv_tile) != kNaBwdKvTokens) return Status::kUnsupported;
  if (p.batch > 1 && (p.extent[0] % q_tile[0] != 0 || p.extent[0] % kv_tile[0] != 0)) return Status::kUnsupported;
  return Status::kSuccess;
}

int64_t na_bwd_workspace_floats(const NaBwdParams& p) {
  if (p.batch <= 0 || p.num_heads_q <= 0 || p.extent[0] <= 0 || p.extent[1] <= 0 || p.extent[2] <= 0) return 0;
  int q_tile[kAxes], kv_tile[kAxes];
  if (na_bwd_tiles(p, q_tile, kv_tile) != Status::kSuccess) return -1;
  return (int64_t)p.num_heads_q * p.batch * na_num_tiles(p, q_tile) * kNaBwdQTokens * (p.head_dim + 2);
}

}  // namespace attnx::na

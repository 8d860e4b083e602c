// The block-sparse backward's iteration space. The forward lists, per forward Q tile (bs_q_block
// rows), the KV tiles it visits; the backward's CTA owns a KV tile and needs the transpose: the
// 64-row backward Q tiles whose forward tile lists it. A light kernel builds those lists before
// the main kernel (one warp per (index batch, index head, KV tile), its lanes over 32 forward Q
// tiles at a time and a prefix sum placing their entries, so every list is sorted and the dK/dV
// sums are deterministic).
//
// bs_lists layout, per list set s = index batch * index heads + index head and KV tile n:
//   counts: bs_lists[s * kv_tiles + n];
//   tiles:  bs_lists[sets * kv_tiles + (s * kv_tiles + n) * m_tiles + i], i < count (ascending).
#pragma once

#include "fmha_bwd_mainloop.cuh"
#include "fmha_params.h"

namespace attnx::fmha {

struct BsListShape {
  int sets_b, sets_h, kv_tiles, m_tiles, q_tiles, sub;  // sub: backward Q tiles per forward Q tile
  __host__ __device__ explicit BsListShape(const FmhaBwdParams& p) {
    sets_b = p.bs_index_batch_stride == 0 ? 1 : p.batch;
    sets_h = p.bs_index_head_stride == 0 ? 1 : p.num_heads_q;
    kv_tiles = (p.seqlen_k + p.bs_kv_block - 1) / p.bs_kv_block;
    m_tiles = (int)(round_up_rows(p.seqlen_q) / kBwdBlockM);
    q_tiles = (p.seqlen_q + p.bs_q_block - 1) / p.bs_q_block;
    sub = p.bs_q_block / kBwdBlockM;
  }
  __host__ __device__ int sets() const { return sets_b * sets_h; }
  __host__ __device__ int* counts(int* lists) const { return lists; }
  __host__ __device__ int* tiles(int* lists) const { return lists + (int64_t)sets() * kv_tiles; }
};

// grid (ceil(kv_tiles / 4), sets), 128 threads: a warp per KV tile (one thread per KV tile scanned
// every forward list serially: 0.6 ms of a 6.8 ms backward for 512 x 512 tiles, measured);
// kBlockN: the KV tile (the launcher checks that the forward's kv_block is it). Entries are clamped
// like the forward's (KvTileList), and a list never exceeds its capacity, so malformed input
// cannot write out of bounds.
template <int kBlockN>
__global__ void __launch_bounds__(128) block_sparse_transpose_kernel(const FmhaBwdParams p) {
  const BsListShape sh(p);
  const int n = blockIdx.x * 4 + threadIdx.x / 32, lane = threadIdx.x % 32, set = blockIdx.y;
  if (n >= sh.kv_tiles) return;  // whole warps leave (n is the warp's)
  const int b = set / sh.sets_h, h = set % sh.sets_h;
  const int* index = p.kv_block_index + b * p.bs_index_batch_stride + h * p.bs_index_head_stride;
  const int* count = p.kv_block_count + b * p.bs_count_batch_stride + h * p.bs_count_head_stride;
  int* list = sh.tiles(p.bs_lists) + ((int64_t)set * sh.kv_tiles + n) * sh.m_tiles;
  int len = 0;
  for (int t0 = 0; t0 < sh.q_tiles; t0 += 32) {
    const int t = t0 + lane;
    bool listed = false;
    if (t < sh.q_tiles) {
      const int c = min(max(count[t * p.bs_count_tile_stride], 0), p.bs_max_count);
      for (int i = 0; i < c; ++i) listed = listed || min(max(index[t * p.bs_index_tile_stride + i], 0), sh.kv_tiles - 1) == n;
    }
    // Forward tile t holds backward tiles t * sub .. (the last one may hold fewer: m < m_tiles).
    const int mine = listed ? min(sh.sub, sh.m_tiles - t * sh.sub) : 0;
    int before = mine;  // inclusive prefix sum over the lanes, then exclusive
    for (int o = 1; o < 32; o *= 2) {
      const int x = __shfl_up_sync(0xffffffff, before, o);
      if (lane >= o) before += x;
    }
    const int total = __shfl_sync(0xffffffff, before, 31);
    before -= mine;
    for (int s = 0; s < mine; ++s)
      if (len + before + s < sh.m_tiles) list[len + before + s] = t * sh.sub + s;
    len = min(len + total, sh.m_tiles);
  }
  if (lane == 0) sh.counts(p.bs_lists)[(int64_t)set * sh.kv_tiles + n] = len;
}

// The walk of one KV tile: for each query head of the group, its listed backward Q tiles.
struct BwdListWalk {
  const int* counts;  // this (batch, KV tile), head g's at counts[g * count_head_stride]
  const int* tiles;   // likewise, head g's list at tiles[g * tile_head_stride]
  int64_t count_head_stride, tile_head_stride;
  int group, head_k;
  int64_t ws_rows, ws_row0;
  int total;

  __device__ BwdListWalk(const FmhaBwdParams& p, int batch, int n_block, int head_k_, int64_t ws_row0_)
      : group(p.num_heads_q / p.num_heads_k), head_k(head_k_), ws_rows(p.ws_rows), ws_row0(ws_row0_) {
    const BsListShape sh(p);
    const int b = sh.sets_b == 1 ? 0 : batch, heads = sh.sets_h;
    const int h0 = heads == 1 ? 0 : head_k * group;
    const int64_t set0 = (int64_t)b * heads + h0;
    counts = sh.counts(p.bs_lists) + set0 * sh.kv_tiles + n_block;
    tiles = sh.tiles(p.bs_lists) + (set0 * sh.kv_tiles + n_block) * sh.m_tiles;
    count_head_stride = heads == 1 ? 0 : sh.kv_tiles;
    tile_head_stride = heads == 1 ? 0 : (int64_t)sh.kv_tiles * sh.m_tiles;
    total = 0;
    for (int g = 0; g < group; ++g) total += counts[g * count_head_stride];
  }
  __device__ int count() const { return total; }
  __device__ BwdStep<int> step(int i) const {
    int g = 0;
    for (int c = counts[0]; i >= c; c = counts[++g * count_head_stride]) i -= c;
    const int head = head_k * group + g, m = tiles[g * tile_head_stride + i];
    return {head, m, (int64_t)head * ws_rows + ws_row0 + (int64_t)m * kBwdBlockM};
  }
};

}  // namespace attnx::fmha

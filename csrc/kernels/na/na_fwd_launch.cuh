// Host launcher of one fused neighborhood-attention forward instance (included by the generated
// instance files only): picks the tile shape, builds the 5-D TMA views and launches.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>

#include <cute/tensor.hpp>
#include <cutlass/cuda_host_adapter.hpp>

#include "../common/cuda_check.h"
#include "../common/device_sms.h"
#include "../common/kernel_attributes.h"
#include "na_fwd_kernel.cuh"
#include "na_tile_choice.h"

namespace attnx::na {

// The tile shape this instance runs a problem with (p.q_tile when set, else the best one).
template <class Traits>
Status na_fwd_tiles(const NaFwdParams& p, int (&q_tile)[kAxes], int (&kv_tile)[kAxes]) {
  static_assert(Traits::kBlockM == Traits::kBlockN);
  int log2_tokens = 0;
  while ((1 << log2_tokens) < Traits::kBlockM) ++log2_tokens;
  if (p.q_tile[0] == 0 && p.q_tile[1] == 0 && p.q_tile[2] == 0) {
    na_choose_tile(p, log2_tokens, q_tile);
  } else {
    for (int a = 0; a < kAxes; ++a) q_tile[a] = p.q_tile[a];
  }
  int tokens = 1;
  for (int a = 0; a < kAxes; ++a) {
    if (!is_pow2(q_tile[a]) || (p.kv_tile[a] != 0 && p.kv_tile[a] != q_tile[a])) return Status::kUnsupported;
    kv_tile[a] = q_tile[a];
    tokens *= q_tile[a];
  }
  if (tokens != Traits::kBlockM || (p.batch > 1 && p.extent[0] % q_tile[0] != 0)) return Status::kUnsupported;
  return Status::kSuccess;
}

template <class Traits>
Status run_na_fwd(const NaFwdParams& p, cudaStream_t stream) {
  bool empty = false;
  if (const Status geometry = na_check_geometry(p, empty); geometry != Status::kSuccess || empty) return geometry;
  int64_t num_q_tiles = 1;

  NaFwdKernelParams<Traits> kp{};
  kp.p = p;
  const Status tiles = na_fwd_tiles<Traits>(p, kp.p.q_tile, kp.p.kv_tile);
  if (tiles != Status::kSuccess) return tiles;
  for (int a = 0; a < kAxes; ++a) num_q_tiles *= (p.extent[a] + kp.p.q_tile[a] - 1) / kp.p.q_tile[a];
  if ((int64_t)p.batch * p.extent[0] >= (1LL << 31))
    return Status::kInvalidArgument;
  kp.num_q_tiles = (int)num_q_tiles;
  if (!make_na_tma_view<Traits>(kp.tma_q, p.q, p, p.num_heads_q, p.q_batch_stride, p.q_axis_stride, p.q_head_stride,
                                kp.p.q_tile) ||
      !make_na_tma_view<Traits>(kp.tma_k, p.k, p, p.num_heads_k, p.k_batch_stride, p.k_axis_stride, p.k_head_stride,
                                kp.p.kv_tile) ||
      !make_na_tma_view<Traits>(kp.tma_v, p.v, p, p.num_heads_k, p.v_batch_stride, p.v_axis_stride, p.v_head_stride,
                                kp.p.kv_tile))
    return Status::kUnsupported;  // strides TMA cannot describe: the caller makes the tensors contiguous

  const int64_t num_work = num_q_tiles * p.batch * p.num_heads_q;
  if (num_work >= (1LL << 31)) return Status::kInvalidArgument;
  kp.num_work = (int)num_work;

  const bool dynamic = p.tile_counter != nullptr;
  auto kernel = dynamic ? na_fwd_kernel<Traits, true> : na_fwd_kernel<Traits, false>;
  static KernelAttributesOnce attributes[2];
  if (attributes[dynamic].set(kernel, kNaSmemBytes<Traits>) != cudaSuccess) return Status::kCudaError;
  // With a tile counter (the binding's default for NA; ATTNX_FWD_PERSISTENT=0 drops it): one CTA
  // per SM resident slot, tiles from the DynamicTileScheduler (2-D k31 0.63 -> 0.59 ms, 1-D k2049
  // 1.27-1.30 -> 1.21 ms; the static round-robin measured no better than one CTA per tile: docs/perf-notes.md).
  // Without one: one CTA per work tile, the kernel's loop runs once.
  int64_t num_ctas = num_work;
  if (dynamic) {
    int num_sms = 0;
    if (current_device_sms(num_sms) != cudaSuccess) return Status::kCudaError;
    num_ctas = std::min<int64_t>(num_work, (int64_t)num_sms * Traits::kMinBlocksPerSm);
  }
  const dim3 grid((unsigned)num_ctas);
  kernel<<<grid, Traits::kNumThreads, kNaSmemBytes<Traits>, stream>>>(kp);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

// The instance's entry: runs the problem with the Config's 128-token or 64-token tiles
// (na_fwd_tile_size; explicit p.q_tile picks by its token count). ATTNX_NA_TILE=64 or 128 forces
// one size, for measurements and tests.
template <class Config>
Status run_na_fwd_config(const NaFwdParams& p, cudaStream_t stream) {
  using Long = typename Config::Traits;
  using Short = typename Config::ShortTraits;
  static_assert(Long::kBlockM == 128 && Short::kBlockM == 64);
  if (p.q_tile[0] != 0 || p.q_tile[1] != 0 || p.q_tile[2] != 0) {
    const int64_t tokens = (int64_t)p.q_tile[0] * p.q_tile[1] * p.q_tile[2];
    return tokens == Short::kBlockM ? run_na_fwd<Short>(p, stream) : run_na_fwd<Long>(p, stream);
  }
  bool empty = false;
  if (const Status geometry = na_check_geometry(p, empty); geometry != Status::kSuccess || empty) return geometry;
  NaFwdParams chosen = p;
  const char* force = std::getenv("ATTNX_NA_TILE");
  const int forced = force != nullptr ? std::atoi(force) : 0;
  int log2_tokens = 0;
  if (forced == 64 || forced == 128) {
    log2_tokens = forced == 64 ? 6 : 7;
    na_choose_tile(p, log2_tokens, chosen.q_tile);
  } else {
    log2_tokens = na_fwd_tile_size(p, 7, 6, chosen.q_tile);
  }
  return log2_tokens == 6 ? run_na_fwd<Short>(chosen, stream) : run_na_fwd<Long>(chosen, stream);
}

}  // namespace attnx::na

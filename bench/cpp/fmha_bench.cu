// Torch-free microbenchmark of the fused-MHA forward and of fused neighborhood attention: links
// the kernel library directly.
//
//   attnx_bench [--batch B] [--seqlen L] [--seqlen-k LK] [--heads H] [--heads-k HK] [--dim D]
//               [--dtype bf16|fp16] [--causal] [--warmup N] [--iters N]
//               [--na-spatial X[,Y[,Z]] --na-kernel K[,K[,K]] [--na-stride S[,S[,S]]]]
//
// With --na-spatial the problem is neighborhood attention over [B, *spatial, H, D] (non-causal,
// stride 1 unless --na-stride; --seqlen is ignored) and TFLOP/s count the attended pairs
// (tokens x prod(kernel)).
// Inputs are random (never zeros), rotated among enough copies to exceed L2; times are CUDA-event
// medians over --iters launches after --warmup launches.
#include <cuda_runtime.h>

#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fmha/fmha_api.h"
#include "na/na_api.h"

#define CHECK_CUDA(x)                                                                        \
  do {                                                                                       \
    cudaError_t e_ = (x);                                                                    \
    if (e_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

__global__ void fill_random(uint16_t* x, size_t n, uint32_t seed, bool bf16) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    const float u = (h & 0xffffff) / float(1 << 24) * 2.f - 1.f;  // uniform in [-1, 1)
    const uint32_t bits = __float_as_uint(u);
    x[i] = bf16 ? (uint16_t)(bits >> 16) : __half_as_ushort(__float2half(u));
  }
}

// "a,b,c" -> {a, b, c}
std::vector<int> int_list(const char* s) {
  std::vector<int> out;
  for (const char* p = s; *p;) {
    out.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  return out;
}

int main(int argc, char** argv) {
  int B = 4, L = 8192, LK = -1, H = 16, HK = -1, D = 128, warmup = 10, iters = 50;
  bool causal = false, bf16 = true;
  std::vector<int> na_spatial, na_kernel, na_stride;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() { return i + 1 < argc ? std::atoi(argv[++i]) : 0; };
    if (a == "--batch") B = next();
    else if (a == "--seqlen") L = next();
    else if (a == "--seqlen-k") LK = next();
    else if (a == "--heads") H = next();
    else if (a == "--heads-k") HK = next();
    else if (a == "--dim") D = next();
    else if (a == "--warmup") warmup = next();
    else if (a == "--iters") iters = next();
    else if (a == "--causal") causal = true;
    else if (a == "--dtype" && i + 1 < argc) bf16 = std::strcmp(argv[++i], "fp16") != 0;
    else if (a == "--na-spatial" && i + 1 < argc) na_spatial = int_list(argv[++i]);
    else if (a == "--na-kernel" && i + 1 < argc) na_kernel = int_list(argv[++i]);
    else if (a == "--na-stride" && i + 1 < argc) na_stride = int_list(argv[++i]);
    else {
      std::printf("usage: %s [--batch B] [--seqlen L] [--seqlen-k LK] [--heads H] [--heads-k HK] [--dim D] "
                  "[--dtype bf16|fp16] [--causal] [--warmup N] [--iters N] [--na-spatial X[,Y[,Z]] --na-kernel K[,K[,K]] "
                  "[--na-stride S[,S[,S]]]]\n"
                  "(built: %s)\n",
                  argv[0], attnx::fmha::built_instances());
      return a == "--help" ? 0 : 2;
    }
  }
  const bool na = !na_spatial.empty();
  if (na) {
    if (na_stride.empty()) na_stride.assign(na_spatial.size(), 1);
    if (na_spatial.size() > 3 || na_kernel.size() != na_spatial.size() || na_stride.size() != na_spatial.size()) {
      std::fprintf(stderr, "--na-spatial takes 1 to 3 extents, --na-kernel and --na-stride one value per extent\n");
      return 2;
    }
    L = 1;
    for (int n : na_spatial) L *= n;
    LK = L;
  }
  if (LK < 0) LK = L;
  if (HK < 0) HK = H;
  const size_t nq = (size_t)B * L * H * D, nkv = (size_t)B * LK * HK * D;
  const size_t set_bytes = 2 * (nq + 2 * nkv) + 2 * nq;
  int dev = 0;
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, dev));
  const int sets = (int)std::max<size_t>(1, (4 * (size_t)prop.l2CacheSize + set_bytes - 1) / set_bytes);

  std::vector<uint16_t*> q(sets), k(sets), v(sets), o(sets);
  std::vector<float*> lse(sets);
  for (int s = 0; s < sets; ++s) {
    CHECK_CUDA(cudaMalloc(&q[s], nq * 2));
    CHECK_CUDA(cudaMalloc(&k[s], nkv * 2));
    CHECK_CUDA(cudaMalloc(&v[s], nkv * 2));
    CHECK_CUDA(cudaMalloc(&o[s], nq * 2));
    CHECK_CUDA(cudaMalloc(&lse[s], (size_t)B * L * H * 4));
    fill_random<<<1024, 256>>>(q[s], nq, 3 * s + 1, bf16);
    fill_random<<<1024, 256>>>(k[s], nkv, 3 * s + 2, bf16);
    fill_random<<<1024, 256>>>(v[s], nkv, 3 * s + 3, bf16);
  }
  CHECK_CUDA(cudaDeviceSynchronize());

  auto params = [&](int s) {
    attnx::fmha::FmhaFwdParams p;
    p.q = q[s], p.k = k[s], p.v = v[s], p.out = o[s], p.lse = lse[s];
    p.q_row_stride = p.o_row_stride = (int64_t)H * D, p.q_head_stride = p.o_head_stride = D;
    p.q_batch_stride = p.o_batch_stride = (int64_t)L * H * D;
    p.k_row_stride = p.v_row_stride = (int64_t)HK * D, p.k_head_stride = p.v_head_stride = D;
    p.k_batch_stride = p.v_batch_stride = (int64_t)LK * HK * D;
    p.batch = B, p.seqlen_q = L, p.seqlen_k = LK, p.num_heads_q = H, p.num_heads_k = HK, p.head_dim = D;
    p.scale = 1.f / std::sqrt((float)D), p.causal = causal;
    p.dtype = bf16 ? attnx::fmha::DType::kBFloat16 : attnx::fmha::DType::kFloat16;
    return p;
  };
  auto na_params = [&](int s) {
    attnx::na::NaFwdParams p;
    p.q = q[s], p.k = k[s], p.v = v[s], p.out = o[s], p.lse = lse[s];
    const int rank = (int)na_spatial.size();
    int64_t stride = (int64_t)H * D, stride_k = (int64_t)HK * D;
    for (int a = attnx::na::kAxes - 1; a >= 0; --a) {
      const int r = a - (attnx::na::kAxes - rank);  // padded axes lead
      p.extent[a] = r >= 0 ? na_spatial[r] : 1, p.kernel_size[a] = r >= 0 ? na_kernel[r] : 1;
      p.stride[a] = r >= 0 ? na_stride[r] : 1;
      p.q_axis_stride[a] = p.o_axis_stride[a] = stride, p.k_axis_stride[a] = p.v_axis_stride[a] = stride_k;
      stride *= p.extent[a], stride_k *= p.extent[a];
    }
    p.q_batch_stride = p.o_batch_stride = stride, p.k_batch_stride = p.v_batch_stride = stride_k;
    p.q_head_stride = p.o_head_stride = p.k_head_stride = p.v_head_stride = D;
    p.batch = B, p.num_heads_q = H, p.num_heads_k = HK, p.head_dim = D, p.scale = 1.f / std::sqrt((float)D);
    p.dtype = bf16 ? attnx::fmha::DType::kBFloat16 : attnx::fmha::DType::kFloat16;
    return p;
  };
  auto launch = [&](int s) {
    return na ? attnx::na::na_fwd(na_params(s), 0) : attnx::fmha::fmha_fwd(params(s), 0);
  };
  for (int i = 0; i < warmup; ++i) {
    attnx::Status st = launch(i % sets);
    if (st != attnx::Status::kSuccess) {
      std::fprintf(stderr, "%s failed: %s (built: %s)\n", na ? "na_fwd" : "fmha_fwd", attnx::status_string(st),
                   attnx::fmha::built_instances());
      return 1;
    }
  }
  CHECK_CUDA(cudaDeviceSynchronize());
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  std::vector<float> ms(iters);
  for (int i = 0; i < iters; ++i) {
    CHECK_CUDA(cudaEventRecord(e0));
    launch(i % sets);
    CHECK_CUDA(cudaEventRecord(e1));
    CHECK_CUDA(cudaEventSynchronize(e1));
    CHECK_CUDA(cudaEventElapsedTime(&ms[i], e0, e1));
  }
  CHECK_CUDA(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  const double med = ms[iters / 2];
  // Visited (query, key) pairs: all of them, or the causal lower triangle (bottom-right aligned).
  double pairs = (double)L * LK;
  if (causal) {
    pairs = 0;
    for (int i = 0; i < L; ++i) pairs += std::clamp<long>((long)i + LK - L + 1, 0, LK);
  }
  if (na) {
    pairs = L;
    for (int kk : na_kernel) pairs *= kk;
    std::string sp, ks;
    for (size_t a = 0; a < na_spatial.size(); ++a)
      sp += (a ? "x" : "") + std::to_string(na_spatial[a]), ks += (a ? "x" : "") + std::to_string(na_kernel[a]);
    if (na_stride != std::vector<int>(na_spatial.size(), 1))
      for (size_t a = 0; a < na_stride.size(); ++a) ks += (a ? "x" : " stride=") + std::to_string(na_stride[a]);
    const double flops = 4.0 * B * H * D * pairs;
    std::printf("na_fwd %s B=%d spatial=%s kernel=%s H=%d HK=%d D=%d: median %.3f ms, %.1f TFLOP/s (%d sets, %d iters)\n",
                bf16 ? "bf16" : "fp16", B, sp.c_str(), ks.c_str(), H, HK, D, med, flops / med * 1e-9, sets, iters);
    return 0;
  }
  const double flops = 4.0 * B * H * D * pairs;
  std::printf("fmha_fwd %s B=%d L=%d LK=%d H=%d HK=%d D=%d causal=%d: median %.3f ms, %.1f TFLOP/s (%d sets, %d iters)\n",
              bf16 ? "bf16" : "fp16", B, L, LK, H, HK, D, causal, med, flops / med * 1e-9, sets, iters);
  return 0;
}

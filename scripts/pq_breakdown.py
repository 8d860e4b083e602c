"""Where pq_sparse_attention fwd+bwd (L16384 H16 D64 k512, clustered q/k) spends its time:
reference vs native encode, sorted vs unsorted selection, attention fwd / fwd+bwd (GPU); then the
2026-12-08 options: pass 1 of the scan on sampled tiles (ATTNX_PQ_SCAN_SAMPLE=auto) and the tiled
attention (ATTNX_SPARSE_TILED=1), each checked against the default path.
    PYTHONPATH=python python scripts/pq_breakdown.py
"""
import os, sys, torch
from unittest import mock
sys.path.insert(0, __file__.rsplit("/", 1)[0])
import attnx
from attnx.ops.pq import encode_call, topk_call
from attnx.ops.sparse import sparse_call
from attnx.reference import pq as ref
from attnx.bench.cases.pq import clustered_qk
from ab_timing import median_ms

class Ctx: device = "cuda"; dtype = torch.bfloat16
b, l, h, d, m, c, kt = 1, 16384, 16, 64, 8, 256, 512
q, k = clustered_qk(b, l, h, d, Ctx, seed=0)
v = torch.randn_like(q); dout = torch.randn_like(q)
cb = attnx.pq.fit(k, m, c, iters=10, seed=0)
cent = cb.centroids
codes = encode_call(k, cent)
rcodes = ref.pq_encode(k, cent)
print("encode codes equal to the reference:", round((codes == rcodes).float().mean().item(), 6))
print("encode reference", round(median_ms(lambda: ref.pq_encode(k, cent), 5, 1), 3), "ms")
print("encode native", round(median_ms(lambda: encode_call(k, cent), 20, 3), 3), "ms")
srt = topk_call(q, codes, cent, kt, False, trusted=True)
uns = topk_call(q, codes, cent, kt, False, sorted=False, trusted=True)
print("unsorted == ascending(sorted):", torch.equal(uns, ref.ascending_keys(srt)))
print("topk sorted", round(median_ms(lambda: topk_call(q, codes, cent, kt, False, trusted=True), 5, 1), 3), "ms")
print("topk unsorted", round(median_ms(lambda: topk_call(q, codes, cent, kt, False, sorted=False, trusted=True), 5, 1), 3), "ms")
for name, idx in (("score order", srt), ("key order", uns)):
    print(f"sparse fwd ({name} lists)", round(median_ms(lambda: sparse_call(q, k, v, idx, None, trusted=True), 10, 2), 3), "ms")
    leaves = tuple(x.detach().requires_grad_() for x in (q, k, v))
    def fb():
        out = sparse_call(*leaves, idx, None, trusted=True)[0]
        return torch.autograd.grad(out, leaves, dout)
    print(f"sparse fwd+bwd ({name} lists)", round(median_ms(fb, 5, 1), 3), "ms")
leaves = tuple(x.detach().requires_grad_() for x in (q, k, v))
def full():
    out = attnx.pq_sparse_attention(*leaves, kt, codebook=cb)
    return torch.autograd.grad(out, leaves, dout)
print("pq_sparse_attention fwd+bwd (selection included)", round(median_ms(full, 5, 1), 3), "ms")


def with_env(env, fn):
    with mock.patch.dict(os.environ, env):
        return fn()


SAMPLE = {"ATTNX_PQ_SCAN_SAMPLE": "auto"}
TILED = {"ATTNX_SPARSE_TILED": "1"}
sampled = with_env(SAMPLE, lambda: topk_call(q, codes, cent, kt, False, sorted=False, trusted=True))
print("sampled scan: rows equal to the full scan's:", round((sampled == uns).all(-1).float().mean().item(), 5))
print("topk unsorted, sampled pass 1", round(with_env(SAMPLE, lambda: median_ms(
    lambda: topk_call(q, codes, cent, kt, False, sorted=False, trusted=True), 5, 1)), 3), "ms")
ref_out = sparse_call(q, k, v, uns, None, trusted=True)[0]
tiled_out = with_env(TILED, lambda: sparse_call(q, k, v, uns, None, trusted=True)[0])
print("tiled fwd: max |diff| to the per-query forward", (tiled_out.float() - ref_out.float()).abs().max().item())
print("sparse fwd tiled (key order lists, MinHash order included)", round(with_env(TILED, lambda: median_ms(
    lambda: sparse_call(q, k, v, uns, None, trusted=True), 10, 2)), 3), "ms")
leaves = tuple(x.detach().requires_grad_() for x in (q, k, v))
def fb_uns():
    out = sparse_call(*leaves, uns, None, trusted=True)[0]
    return torch.autograd.grad(out, leaves, dout)
g_ref = fb_uns()
g_tiled = with_env(TILED, fb_uns)
print("tiled fwd+bwd: rel err of dq, dk, dv to the default path",
      [round(((a.float() - b.float()).norm() / b.float().norm()).item(), 5) for a, b in zip(g_tiled, g_ref)])
print("sparse fwd+bwd tiled", round(with_env(TILED, lambda: median_ms(fb_uns, 5, 1)), 3), "ms")
print("pq_sparse_attention fwd+bwd, tiled + sampled scan", round(with_env({**TILED, **SAMPLE},
      lambda: median_ms(full, 5, 1)), 3), "ms")

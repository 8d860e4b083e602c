"""GPU tests of the dense FMHA kernel against the reference (skipped without CUDA or the native library).

Fresh random inputs per case; the caching allocator is filled with NaN before each call, so an
output element the kernel fails to write shows up as NaN; relative error per dtype.
"""
from __future__ import annotations

import pytest
import torch

import attnx
from attnx import _native
from conftest import rel_err

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not _native.has_cuda_kernel("attention"),
    reason="needs a CUDA GPU and the native library")

# Kernel vs fp32 reference: P is rounded to 16 bits before P @ V.
OUT_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.2e-2}
LSE_TOL = 1e-3


def poison_allocator(nbytes: int = 1 << 28):
    """Fill free blocks of the caching allocator with NaN so unwritten outputs read as NaN."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").fill_(float("nan"))
    del x


def built(dtype, d, family="fmha_fwd"):
    tag = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    return f"{family}_{tag}_hdim{d}" in _native.instances()


SHAPES = [  # B, Lq, Lk, Hq, Hk
    (1, 1, 1, 1, 1),
    (2, 128, 128, 4, 4),
    (1, 127, 300, 6, 2),
    (2, 513, 257, 2, 1),
    (1, 1000, 1000, 3, 3),
    (1, 64, 65, 8, 8),
    (3, 200, 17, 2, 2),
    (2, 512, 512, 4, 2),  # the longest problem of the short-problem tiles
    (1, 3, 512, 2, 2),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_attention_kernel_matches_reference(dtype, d, causal, shape):
    if not built(dtype, d):
        pytest.skip("instance not built")
    b, lq, lk, hq, hk = shape
    q = torch.randn(b, lq, hq, d, device="cuda", dtype=dtype)
    k = torch.randn(b, lk, hk, d, device="cuda", dtype=dtype)
    v = torch.randn(b, lk, hk, d, device="cuda", dtype=dtype)
    assert _native.covers("attention", q, k, v)
    poison_allocator()
    out, lse = torch.ops.attnx.attention(q, k, v, causal, None)
    torch.cuda.synchronize()
    ref_out, ref_lse = attnx.reference.attention(q, k, v, causal=causal, return_lse=True)
    assert rel_err(out, ref_out) < OUT_TOL[dtype]
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "empty rows differ"
    fin = torch.isfinite(ref_lse)
    assert not torch.isnan(lse).any()
    assert (lse[fin] - ref_lse[fin]).abs().max().item() < LSE_TOL if fin.any() else True


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_attention_kernel_edge_sizes(dtype):
    d = 128 if built(dtype, 128) else 64
    for b, lq, lk in [(0, 5, 5), (2, 0, 5), (2, 5, 0)]:
        q = torch.randn(b, lq, 2, d, device="cuda", dtype=dtype)
        k = torch.randn(b, lk, 2, d, device="cuda", dtype=dtype)
        poison_allocator()
        out, lse = torch.ops.attnx.attention(q, k, k, False, None)
        assert out.shape == (b, lq, 2, d) and lse.shape == (b, lq, 2)
        if out.numel():
            assert torch.all(out == 0) and torch.all(torch.isneginf(lse)), "no keys: out 0, lse -inf"


def test_attention_kernel_strided_views_and_scale():
    """q/k/v as views of one packed [B, L, 3, H, D] tensor: no copies, any row/head strides."""
    d = 128 if built(torch.bfloat16, 128) else 64
    qkv = torch.randn(2, 333, 3, 4, d, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.unbind(2)
    out = torch.ops.attnx.attention(q, k, v, True, 0.37)[0]
    ref = attnx.reference.attention(q, k, v, causal=True, scale=0.37)
    assert rel_err(out, ref) < OUT_TOL[torch.bfloat16]


def test_causal_bottom_right_with_empty_rows():
    d = 128 if built(torch.bfloat16, 128) else 64
    q = torch.randn(1, 300, 2, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 100, 2, d, device="cuda", dtype=torch.bfloat16)
    poison_allocator()
    out, lse = torch.ops.attnx.attention(q, k, k, True, None)
    assert torch.all(out[:, :200] == 0) and torch.all(torch.isneginf(lse[:, :200]))
    ref = attnx.reference.attention(q, k, k, causal=True)
    assert rel_err(out, ref) < OUT_TOL[torch.bfloat16]


def test_uncovered_configs_fall_back_or_raise():
    q = torch.randn(1, 50, 2, 96, device="cuda", dtype=torch.bfloat16)
    assert not _native.covers("attention", q, q, q)
    with pytest.raises(RuntimeError, match="head dim"):
        torch.ops.attnx.attention(q, q, q, False, None)
    out = attnx.attention(q, q, q)  # the public API runs the reference for it
    assert rel_err(out, attnx.reference.attention(q, q, q)) < 1e-2
    q32 = torch.randn(1, 50, 2, 64, device="cuda")
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.attnx.attention(q32, q32, q32, False, None)
    assert rel_err(attnx.attention(q32, q32, q32), attnx.reference.attention(q32, q32, q32)) < 1e-5


def test_attention_autograd_on_gpu():
    """Forward and backward through the native kernels, against the reference autograd."""
    d = 128 if built(torch.bfloat16, 128) else 64
    q, k, v = (torch.randn(2, 130, 4, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    out = attnx.attention(q, k, v, causal=True)
    g = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)
    q2, k2, v2 = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    rq, rk, rv = torch.autograd.grad(attnx.reference.attention(q2, k2, v2, causal=True), (q2, k2, v2), g)
    for a, b in ((dq, rq), (dk, rk), (dv, rv)):
        assert rel_err(a, b) < 2e-2


def test_misaligned_views_fall_back():
    """A head-dim slice whose rows are not 16-byte aligned: the op raises, attnx.attention falls back."""
    d = 64 if built(torch.bfloat16, 64) else 128
    base = torch.randn(1, 70, 2, d + 4, device="cuda", dtype=torch.bfloat16)
    q = base[..., 4:]  # last dim contiguous, base pointer off by 8 bytes
    assert not _native.covers("attention", q, q, q)
    with pytest.raises(RuntimeError, match="aligned"):
        torch.ops.attnx.attention(q, q, q, False, None)
    assert rel_err(attnx.attention(q, q, q), attnx.reference.attention(q, q, q)) < OUT_TOL[torch.bfloat16]


# Gradients: the kernel accumulates dQ in float32 across KV tiles and rounds dK/dV once.
GRAD_TOL = {torch.float16: 5e-3, torch.bfloat16: 2e-2}


# The backward kernels loop over KV tiles (a CTA carries its pipelines, K/V buffers and the dQ
# hand-off from one tile to the next). One CTA per tile is the default; ATTNX_BWD_PERSISTENT caps
# the grid so that CTAs take several tiles (1: one CTA takes every tile).
BWD_CTAS = [None, "1", "3"]


def set_bwd_ctas(monkeypatch, ctas):
    if ctas is not None:
        monkeypatch.setenv("ATTNX_BWD_PERSISTENT", ctas)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_attention_backward_kernel_matches_reference(dtype, d, causal, shape, monkeypatch):
    if not built(dtype, d) or f"fmha_bwd_{'bf16' if dtype == torch.bfloat16 else 'fp16'}_hdim{d}" not in _native.instances():
        pytest.skip("instance not built")
    b, lq, lk, hq, hk = shape
    set_bwd_ctas(monkeypatch, BWD_CTAS[(SHAPES.index(shape) + d // 64 + causal) % len(BWD_CTAS)])
    q = torch.randn(b, lq, hq, d, device="cuda", dtype=dtype)
    k = torch.randn(b, lk, hk, d, device="cuda", dtype=dtype)
    v = torch.randn(b, lk, hk, d, device="cuda", dtype=dtype)
    out, lse = torch.ops.attnx.attention(q, k, v, causal, None)
    dout = torch.randn_like(out)
    dlse = torch.randn_like(lse) if lq % 2 else None  # odd lengths also exercise the lse gradient
    poison_allocator()
    grads = torch.ops.attnx.attention_backward(dout, dlse, q, k, v, out, lse, causal, None)
    torch.cuda.synchronize()
    ref_out, ref_lse = attnx.reference.attention(q, k, v, causal=causal, return_lse=True)
    refs = attnx.reference.dense_varlen.attention_bwd(dout, dlse, q, k, v, causal, None)
    for name, g, r in zip(("dq", "dk", "dv"), grads, refs):
        assert not torch.isnan(g).any(), name
        assert rel_err(g, r) < GRAD_TOL[dtype], name


@pytest.mark.parametrize("d", [64, 128])
def test_attention_backward_same_dk_dv_whatever_the_grid(d, monkeypatch):
    """dK/dV are reduced in registers in a fixed order per KV tile, so they are bitwise the same
    whether one CTA walks every tile, a few CTAs share them, or each tile has its own CTA."""
    if f"fmha_bwd_bf16_hdim{d}" not in _native.instances():
        pytest.skip("instance not built")
    torch.manual_seed(d)
    q = torch.randn(2, 700, 4, d, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(2, 900, 2, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out, lse = torch.ops.attnx.attention(q, k, v, True, None)
    dout = torch.randn_like(out)
    results = []
    for ctas in ("sms", "1", "5", None):
        if ctas is None:
            monkeypatch.delenv("ATTNX_BWD_PERSISTENT", raising=False)
        else:
            monkeypatch.setenv("ATTNX_BWD_PERSISTENT", ctas)
        poison_allocator()
        results.append(torch.ops.attnx.attention_backward(dout, None, q, k, v, out, lse, True, None))
    ref = attnx.reference.dense_varlen.attention_bwd(dout, None, q, k, v, True, None)
    for dq, dk, dv in results:
        assert torch.equal(dk, results[0][1]) and torch.equal(dv, results[0][2])
        assert rel_err(dq, ref[0]) < GRAD_TOL[torch.bfloat16]
    assert rel_err(results[0][1], ref[1]) < GRAD_TOL[torch.bfloat16]

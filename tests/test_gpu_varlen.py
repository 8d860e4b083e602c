"""GPU tests of the packed (varlen) FMHA kernel against the reference.

Random sequence lengths (0, 1, odd, longer than a 128-row tile), GQA ratios, causal and sliding
windows, Lq != Lk per sequence; outputs poisoned (NaN) before each call; per-dtype tolerances.
"""
from __future__ import annotations

import random

import pytest
import torch

import attnx
from attnx import _native
from conftest import rel_err
from test_gpu_attention import BWD_CTAS, LSE_TOL, OUT_TOL, built, poison_allocator, set_bwd_ctas

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not _native.has_cuda_kernel("varlen_attention"),
    reason="needs a CUDA GPU and the native library")


def cu_seqlens(lengths):
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device="cuda")


def run_case(dtype, d, lens_q, lens_k, hq, hk, causal, window):
    cu_q, cu_k = cu_seqlens(lens_q), cu_seqlens(lens_k)
    q = torch.randn(sum(lens_q), hq, d, device="cuda", dtype=dtype)
    k = torch.randn(sum(lens_k), hk, d, device="cuda", dtype=dtype)
    v = torch.randn(sum(lens_k), hk, d, device="cuda", dtype=dtype)
    mq, mk = max(lens_q, default=0), max(lens_k, default=0)
    assert _native.covers("varlen_attention", q, k, v)
    poison_allocator()
    out, lse = torch.ops.attnx.varlen_attention(q, k, v, cu_q, cu_k, mq, mk, causal, window[0], window[1], None)
    torch.cuda.synchronize()
    ref_out, ref_lse = attnx.reference.varlen_attention(q, k, v, cu_q, cu_k, mq, mk, causal=causal, window=window,
                                                        return_lse=True)
    assert rel_err(out, ref_out) < OUT_TOL[dtype]
    assert not torch.isnan(lse).any()
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "empty rows differ"
    fin = torch.isfinite(ref_lse)
    if fin.any():
        assert (lse[fin] - ref_lse[fin]).abs().max().item() < LSE_TOL


LENGTHS = [
    ([1], [1]),
    ([0, 5, 0], [0, 5, 3]),
    ([7, 130, 1, 257], [7, 130, 1, 257]),
    ([200, 33], [64, 300]),  # Lq != Lk: bottom-right alignment per sequence
    ([128, 129, 0, 511], [128, 129, 17, 511]),
    ([600, 40, 513], [600, 40, 513]),  # past the short-problem tiles' 512
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lens", LENGTHS, ids=lambda x: "-".join(map(str, x[0])))
def test_varlen_kernel_matches_reference(dtype, d, causal, lens):
    if not built(dtype, d):
        pytest.skip("instance not built")
    run_case(dtype, d, lens[0], lens[1], 4, 2, causal, (-1, -1))


@pytest.mark.parametrize("window", [(0, 0), (16, 0), (100, 7), (-1, 40), (300, -1)])
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_kernel_windows(window, causal):
    d = 128 if built(torch.bfloat16, 128) else 64
    run_case(torch.bfloat16, d, [300, 1, 129, 64], [300, 40, 129, 500], 2, 1, causal, window)


@pytest.mark.parametrize("seed", range(6))
def test_varlen_kernel_random_batches(seed):
    rng = random.Random(seed)
    d = 128 if built(torch.bfloat16, 128) else 64
    b = rng.randint(1, 9)
    lens_q = [rng.choice([0, 1, rng.randint(1, 400)]) for _ in range(b)]
    lens_k = [n if rng.random() < 0.5 else rng.randint(0, 400) for n in lens_q]
    hk = rng.choice([1, 2, 4])
    window = rng.choice([(-1, -1), (rng.randint(0, 200), rng.randint(-1, 50))])
    run_case(torch.bfloat16, d, lens_q, lens_k, hk * rng.choice([1, 2, 3]), hk, rng.random() < 0.5, window)


def test_varlen_packed_qkv_views():
    """q/k/v as views of one packed [T, 3, H, D] tensor (row stride 3*H*D): no copies."""
    d = 128 if built(torch.bfloat16, 128) else 64
    lens = [100, 0, 257, 3]
    cu = cu_seqlens(lens)
    qkv = torch.randn(sum(lens), 3, 4, d, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.unbind(1)
    out = attnx.varlen_attention(q, k, v, cu, cu, max(lens), max(lens), causal=True, scale=0.3)
    ref = attnx.reference.varlen_attention(q, k, v, cu, cu, max(lens), max(lens), causal=True, scale=0.3)
    assert rel_err(out, ref) < OUT_TOL[torch.bfloat16]


def test_varlen_all_empty_and_no_keys():
    d = 128 if built(torch.bfloat16, 128) else 64
    run_case(torch.bfloat16, d, [3, 0, 9], [0, 0, 0], 2, 2, False, (-1, -1))
    run_case(torch.bfloat16, d, [0, 0], [0, 4], 2, 2, True, (-1, -1))


def test_varlen_malformed_cu_seqlens_raise():
    d = 128 if built(torch.bfloat16, 128) else 64
    q = torch.randn(10, 2, d, device="cuda", dtype=torch.bfloat16)
    good = cu_seqlens([4, 6])
    cases = [
        ("cu_seqlens_q", torch.tensor([0, 6, 4], dtype=torch.int32, device="cuda"), good),   # decreasing
        ("cu_seqlens_q", torch.tensor([0, 4, 11], dtype=torch.int32, device="cuda"), good),  # total mismatch
        ("cu_seqlens_q", good.long(), good),                                                  # not int32
        ("cu_seqlens_k", good, torch.tensor([0, 10], dtype=torch.int32, device="cuda")),     # wrong length
    ]
    for name, cq, ck in cases:
        with pytest.raises(ValueError, match=name):
            attnx.varlen_attention(q, q, q, cq, ck, 10, 10)
    with pytest.raises(ValueError, match="max_seqlen_q"):
        attnx.varlen_attention(q, q, q, good, good, 5, 10)
    with pytest.raises(RuntimeError, match="cu_seqlens_q"):
        torch.ops.attnx.varlen_attention(q, q, q, good.long(), good, 10, 10, False, -1, -1, None)


def test_varlen_autograd_on_gpu():
    """Forward through the kernel, backward through the varlen_attention_backward op."""
    d = 128 if built(torch.bfloat16, 128) else 64
    lens = [70, 0, 131]
    cu = cu_seqlens(lens)
    q, k, v = (torch.randn(sum(lens), 2, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    out = attnx.varlen_attention(q, k, v, cu, cu, 131, 131, causal=True)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    q2, k2, v2 = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    ref = attnx.reference.varlen_attention(q2, k2, v2, cu, cu, 131, 131, causal=True)
    for a, b in zip(grads, torch.autograd.grad(ref, (q2, k2, v2), g)):
        assert rel_err(a, b) < 2e-2


def test_varlen_values_rechecked_after_in_place_change():
    """cu_seqlens are checked once per tensor pair; an in-place edit (new version) is checked again."""
    d = 128 if built(torch.bfloat16, 128) else 64
    q = torch.randn(10, 2, d, device="cuda", dtype=torch.bfloat16)
    cu = cu_seqlens([4, 6])
    attnx.varlen_attention(q, q, q, cu, cu, 6, 6)
    attnx.varlen_attention(q, q, q, cu, cu, 6, 6)
    cu[1] = 7  # [0, 7, 10]: well formed, but sequence 0 is now longer than max_seqlen 6
    with pytest.raises(ValueError, match="max_seqlen_q"):
        attnx.varlen_attention(q, q, q, cu, cu, 6, 6)


def test_varlen_remembered_layout_still_checks_other_calls():
    """A layout seen before skips the structural checks; any other call still takes them: a bool
    max_seqlen (hashes like 1), a different window, a CPU cu_seqlens."""
    d = 128 if built(torch.bfloat16, 128) else 64
    q = torch.randn(10, 2, d, device="cuda", dtype=torch.bfloat16)
    cu = cu_seqlens([1, 9])
    attnx.varlen_attention(q, q, q, cu, cu, 9, 9)
    attnx.varlen_attention(q, q, q, cu, cu, 9, 9)  # remembered
    with pytest.raises(ValueError, match="max_seqlen_q"):
        attnx.varlen_attention(q, q, q, cu, cu, True, 9)
    with pytest.raises(ValueError, match="window"):
        attnx.varlen_attention(q, q, q, cu, cu, 9, 9, window=(-2, 0))
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        attnx.varlen_attention(q, q, q, cu.cpu(), cu, 9, 9)


@pytest.mark.parametrize("seed", range(8))
def test_varlen_backward_kernel_matches_reference(seed, monkeypatch):
    set_bwd_ctas(monkeypatch, BWD_CTAS[seed % len(BWD_CTAS)])  # several tiles per CTA, some of them empty
    rng = random.Random(100 + seed)
    dtype = rng.choice([torch.float16, torch.bfloat16])
    d = rng.choice([64, 128])
    tag = "bf16" if dtype == torch.bfloat16 else "fp16"
    if f"fmha_bwd_{tag}_hdim{d}" not in _native.instances():
        pytest.skip("instance not built")
    b = rng.randint(1, 6)
    lens_q = [rng.choice([0, 1, rng.randint(1, 300)]) for _ in range(b)]
    lens_k = [n if rng.random() < 0.5 else rng.randint(0, 300) for n in lens_q]
    hk = rng.choice([1, 2])
    hq = hk * rng.choice([1, 3])
    causal = rng.random() < 0.5
    window = rng.choice([(-1, -1), (rng.randint(0, 100), rng.randint(-1, 30))])
    cu_q, cu_k = cu_seqlens(lens_q), cu_seqlens(lens_k)
    q = torch.randn(sum(lens_q), hq, d, device="cuda", dtype=dtype)
    k = torch.randn(sum(lens_k), hk, d, device="cuda", dtype=dtype)
    v = torch.randn(sum(lens_k), hk, d, device="cuda", dtype=dtype)
    mq, mk = max(lens_q), max(lens_k)
    out, lse = torch.ops.attnx.varlen_attention(q, k, v, cu_q, cu_k, mq, mk, causal, window[0], window[1], None)
    dout = torch.randn_like(out)
    dlse = torch.where(torch.isinf(lse), torch.zeros_like(lse), torch.randn_like(lse)) if seed % 2 else None
    poison_allocator()
    grads = torch.ops.attnx.varlen_attention_backward(dout, dlse, q, k, v, out, lse, cu_q, cu_k, mq, mk, causal,
                                                       window[0], window[1], None)
    torch.cuda.synchronize()
    refs = attnx.reference.dense_varlen.varlen_bwd(dout, dlse, q, k, v, cu_q, cu_k, causal, window, None)
    tol = {torch.float16: 5e-3, torch.bfloat16: 2e-2}[dtype]
    for name, g, r in zip(("dq", "dk", "dv"), grads, refs):
        assert not torch.isnan(g).any(), name
        assert rel_err(g, r) < tol, name


def test_varlen_more_sequences_than_a_grid_dimension():
    """70000 one-token sequences (CUDA grid y/z stop at 65535): with a single key, out = v,
    lse = scale * q.k, and the gradients are dv = dout, dq = dk = 0."""
    d = 128 if built(torch.bfloat16, 128) else 64
    n = 70000
    cu = torch.arange(n + 1, dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(n, 1, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out, lse = torch.ops.attnx.varlen_attention(q, k, v, cu, cu, 1, 1, False, -1, -1, None)
    assert torch.equal(out, v)
    ref_lse = (q.float() * k.float()).sum(-1) * d ** -0.5
    assert (lse - ref_lse).abs().max().item() < 1e-3
    dout = torch.randn_like(out)
    dq, dk, dv = torch.ops.attnx.varlen_attention_backward(dout, None, q, k, v, out, lse, cu, cu, 1, 1, False, -1,
                                                           -1, None)
    assert torch.equal(dv, dout)
    assert dq.abs().max().item() < 1e-2 and dk.abs().max().item() < 1e-2


# ----------------------------------------------------------------------------- unpad / pad kernels
# The native kernels copy rows as bytes with the widest unit (16..1 bytes) the row size and base
# addresses allow, and walk the mask in 2048-position chunks: the shapes cover every copy unit,
# masks across chunk boundaries, empty and full rows, L = 0 and B = 0. Exact equality: a copy.

UNPAD_SHAPES = [  # x shape, dtype: row bytes 1536 (16-byte unit), 24 (8), 12 (4), 6 (2), 3 (1)
    ((5, 300, 12, 64), torch.bfloat16),
    ((3, 4100, 3, 4), torch.float16),
    ((4, 2049, 3), torch.float32),
    ((2, 77, 3), torch.float16),
    ((3, 50, 3), torch.uint8),
    ((6, 1), torch.int64),
    ((1, 5000, 8, 16), torch.float32),
]


def _mask(B, L, p, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    m = torch.rand(B, L, generator=g, device="cuda") < p
    if B > 1:
        m[0] = False  # an empty sequence
        m[1] = True   # a full one
    return m


def _rows(shape, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g, device="cuda").to(dtype)
    return torch.randint(0, 100, shape, generator=g, device="cuda").to(dtype)


@pytest.mark.parametrize("shape,dtype", UNPAD_SHAPES, ids=str)
@pytest.mark.parametrize("p", [0.6, 0.03])
def test_unpad_pad_kernels_match_reference(shape, dtype, p):
    assert _native.has_cuda_kernel("unpad") and _native.has_cuda_kernel("pad")
    B, L = shape[:2]
    x, mask = _rows(shape, dtype, 1), _mask(B, L, p, 2)
    poison_allocator()
    packed, indices, cu, max_seqlen = attnx.unpad(x, mask)
    e_packed, e_indices, e_cu, e_max = attnx.reference.unpad(x, mask)
    assert torch.equal(packed, e_packed) and packed.dtype == dtype
    assert torch.equal(indices, e_indices) and indices.dtype == torch.int64
    assert torch.equal(cu, e_cu) and cu.dtype == torch.int32
    assert max_seqlen == e_max and type(max_seqlen) is int
    poison_allocator()
    back = attnx.pad(packed, indices, B, L)
    assert torch.equal(back, attnx.reference.pad(packed, indices, B, L))
    assert torch.equal(attnx.pad(packed, indices.int(), B, L), back)  # int32 indices too


@pytest.mark.parametrize("B,L", [(0, 5), (3, 0), (0, 0)])
def test_unpad_pad_kernels_empty(B, L):
    x = torch.randn(B, L, 2, 8, device="cuda", dtype=torch.bfloat16)
    mask = torch.ones(B, L, dtype=torch.bool, device="cuda")
    packed, indices, cu, max_seqlen = attnx.unpad(x, mask)
    assert packed.shape == (0, 2, 8) and indices.numel() == 0
    assert cu.tolist() == [0] * (B + 1) and max_seqlen == 0
    assert attnx.pad(packed, indices, B, L).shape == (B, L, 2, 8)


def test_unpad_pad_kernels_views_and_offsets():
    """Non-contiguous x and an odd base offset (1-byte copy unit) give the same rows."""
    base = torch.randn(4, 300, 16, 64, device="cuda", dtype=torch.float16)
    x = base[:, :, ::2]  # strided heads
    mask = _mask(4, 300, 0.5, 3)
    assert torch.equal(attnx.unpad(x, mask)[0], x[mask])
    raw = torch.randint(0, 255, (1 + 3 * 200 * 5,), dtype=torch.uint8, device="cuda")
    y = raw[1:].view(3, 200, 5)  # base address odd
    m = _mask(3, 200, 0.5, 4)
    packed, indices, _, _ = attnx.unpad(y, m)
    assert torch.equal(packed, y[m])
    assert torch.equal(attnx.pad(packed, indices, 3, 200), y * m[..., None])


def test_unpad_pad_kernels_gradients():
    x = torch.randn(3, 500, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    mask = _mask(3, 500, 0.6, 5)
    packed, indices, _, _ = attnx.unpad(x, mask)
    g = torch.randn_like(packed)
    (gx,) = torch.autograd.grad(packed, x, g)
    assert torch.equal(gx, attnx.reference.pad(g, indices, 3, 500))
    xp = packed.detach().requires_grad_()
    out = attnx.pad(xp, indices, 3, 500)
    go = torch.randn_like(out)
    (gp,) = torch.autograd.grad(out, xp, go)
    assert torch.equal(gp, go[mask])


def test_pad_kernel_bad_indices():
    xp = torch.randn(4, 8, device="cuda")
    with pytest.raises(ValueError, match="indices"):
        attnx.pad(xp, torch.tensor([0, 1, 2, 6], device="cuda"), 2, 3)
    ok = torch.tensor([0, 1, 2, 3], device="cuda")
    attnx.pad(xp, ok, 2, 3)
    ok[3] = -1  # an in-place change is checked again
    with pytest.raises(ValueError, match="indices"):
        attnx.pad(xp, ok, 2, 3)
    # the op itself (no Python checks) skips out-of-range rows instead of writing out of bounds
    out = torch.ops.attnx.pad(xp, torch.tensor([0, 1, 2, 600], device="cuda"), 2, 3)
    torch.cuda.synchronize()
    assert torch.equal(out.reshape(6, 8)[:3], xp[:3]) and (out.reshape(6, 8)[3:] == 0).all()


def test_unpad_pad_native_ops_pass_opcheck():
    """The CUDA kernels against their schemas and fake kernels (max_seqlen on the CPU in both)."""
    x = torch.randn(3, 70, 2, 8, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    mask = _mask(3, 70, 0.5, 6)
    torch.library.opcheck(torch.ops.attnx.unpad.default, (x, mask))
    idx = torch.nonzero(mask.flatten()).flatten()
    xp = torch.randn(idx.numel(), 2, 8, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    torch.library.opcheck(torch.ops.attnx.pad.default, (xp, idx, 3, 70))

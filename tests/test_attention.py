"""Dense attention, varlen attention and unpad/pad against a naive float64 definition.

The expected values are built here from DESIGN.md's words, never from attnx:
  * dense: q [B, Lq, Hq, D], k [B, Lk, Hk, D], v [B, Lk, Hk, Dv]; head h uses kv head
    h // (Hq // Hk); causal is bottom-right aligned (query i sees keys j <= i + Lk - Lq);
    a row with no key gives out 0 and lse -inf.
  * varlen: per sequence the same rules, plus window (left, right):
    i + Lk - Lq - left <= j <= i + Lk - Lq + right (-1 unbounded), causal means right = 0.
"""
from __future__ import annotations

import math

import pytest
import torch

import attnx
import attnx.reference
from conftest import TOL, assert_close, default_scale, force_small_chunks, fwd_bwd, naive_rows

IMPLS = ["reference", "api"]


def impl(which: str, name: str):
    return getattr(attnx.reference if which == "reference" else attnx, name)


# ----------------------------------------------------------------------------- naive


def visible_range(i, lq, lk, causal, window=(-1, -1)):
    left, right = window
    if causal:
        right = 0
    off = lk - lq
    lo = 0 if left < 0 else max(0, i + off - left)
    hi = lk - 1 if right < 0 else min(lk - 1, i + off + right)
    return range(lo, hi + 1)


def naive_attention(q, k, v, causal=False, scale=None, window=(-1, -1)):
    """q [B, Lq, Hq, D] ... -> out [B, Lq, Hq, Dv] float64, lse [B, Lq, Hq] float64."""
    b_, lq, hq, d = q.shape
    lk, hk, dv = k.shape[1], k.shape[2], v.shape[-1]
    scale = default_scale(d) if scale is None else scale
    out = torch.zeros(b_, lq, hq, dv, dtype=torch.float64)
    lse = torch.full((b_, lq, hq), float("-inf"), dtype=torch.float64)
    for b in range(b_):
        for h in range(hq):
            g = h // (hq // hk)
            o, l = naive_rows(q[b, :, h], k[b, :, g], v[b, :, g],
                              lambda i: visible_range(i, lq, lk, causal, window), scale)
            out[b, :, h], lse[b, :, h] = o, l
    return out, lse


def rand(*shape, dtype=torch.float64, requires_grad=False):
    return torch.randn(*shape, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)


def check_lse(lse, lse_ref, dtype, tol):
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32), lse.dtype
    assert tuple(lse.shape) == tuple(lse_ref.shape)
    # lse carries no output rounding: compare tightly, except bf16/fp16 inputs (rounded inputs
    # are exact in fp64, so only compute rounding remains).
    assert_close(lse, lse_ref, max(tol * 0.1, 1e-5) if dtype != torch.float64 else 1e-10, "lse")


# ----------------------------------------------------------------------------- dense

# (B, Lq, Lk, Hq, Hk, D, Dv)
DENSE_SHAPES = [
    (2, 5, 5, 2, 2, 8, 8),
    (1, 3, 7, 4, 2, 8, 6),     # Lq < Lk, GQA, Dv != D
    (2, 7, 3, 2, 1, 5, 5),     # Lq > Lk: causal rows 0..3 see nothing; MQA
    (3, 9, 11, 6, 3, 7, 13),   # odd everything
    (1, 1, 1, 1, 1, 1, 1),
    (1, 1, 6, 3, 1, 4, 4),     # decode-like
]


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_attention_fp64(which, causal, shape):
    B, Lq, Lk, Hq, Hk, D, Dv = shape
    q, k, v = rand(B, Lq, Hq, D), rand(B, Lk, Hk, D), rand(B, Lk, Hk, Dv)
    out, lse = impl(which, "attention")(q, k, v, causal=causal, return_lse=True)
    out_ref, lse_ref = naive_attention(q, k, v, causal)
    assert out.dtype == torch.float64 and tuple(out.shape) == (B, Lq, Hq, Dv)
    assert_close(out, out_ref, 1e-10)
    check_lse(lse, lse_ref, torch.float64, 1e-10)


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 7, 9, 4, 2, 16, 8), (2, 9, 4, 2, 2, 8, 8)],
                         ids=lambda s: "x".join(map(str, s)))
def test_attention_low_precision(which, dtype, causal, shape):
    B, Lq, Lk, Hq, Hk, D, Dv = shape
    q, k, v = rand(B, Lq, Hq, D, dtype=dtype), rand(B, Lk, Hk, D, dtype=dtype), rand(B, Lk, Hk, Dv, dtype=dtype)
    out, lse = impl(which, "attention")(q, k, v, causal=causal, return_lse=True)
    out_ref, lse_ref = naive_attention(q, k, v, causal)
    assert out.dtype == dtype
    assert_close(out, out_ref, TOL[dtype])
    check_lse(lse, lse_ref, dtype, TOL[dtype])


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("scale", [None, 0.3, 1.7])
def test_attention_scale(which, scale):
    q, k, v = rand(1, 4, 2, 6), rand(1, 5, 2, 6), rand(1, 5, 2, 6)
    out, lse = impl(which, "attention")(q, k, v, scale=scale, return_lse=True)
    out_ref, lse_ref = naive_attention(q, k, v, scale=scale)
    assert_close(out, out_ref, 1e-10)
    assert_close(lse, lse_ref, 1e-10, "lse")


@pytest.mark.parametrize("which", IMPLS)
def test_attention_return_lse_flag(which):
    q, k, v = rand(1, 3, 1, 4), rand(1, 3, 1, 4), rand(1, 3, 1, 4)
    out = impl(which, "attention")(q, k, v)
    assert isinstance(out, torch.Tensor), "return_lse=False must return the output tensor alone"
    res = impl(which, "attention")(q, k, v, return_lse=True)
    assert isinstance(res, tuple) and len(res) == 2
    assert torch.equal(res[0], out)


@pytest.mark.parametrize("which", IMPLS)
def test_attention_causal_empty_rows(which):
    """Lq > Lk causal: query i sees keys j <= i + Lk - Lq, so the first Lq - Lk rows see nothing."""
    B, Lq, Lk, H, D = 1, 6, 2, 2, 4
    q, k, v = rand(B, Lq, H, D), rand(B, Lk, H, D), rand(B, Lk, H, D)
    out, lse = impl(which, "attention")(q, k, v, causal=True, return_lse=True)
    assert torch.equal(out[:, :4], torch.zeros_like(out[:, :4]))
    assert torch.isneginf(lse[:, :4]).all()
    assert torch.isfinite(lse[:, 4:]).all()
    # Row Lq-1 sees all keys; row Lq-2 sees only key 0: out equals v[0].
    assert_close(out[0, 4], v[0, 0], 1e-12, "row that sees only key 0")


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("shape", [(0, 3, 3, 2, 2, 4, 4), (2, 0, 3, 2, 2, 4, 4), (2, 3, 0, 2, 1, 4, 4),
                                   (2, 3, 3, 2, 2, 4, 0)],
                         ids=["B0", "Lq0", "Lk0", "Dv0"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_zero_sizes(which, shape, causal):
    B, Lq, Lk, Hq, Hk, D, Dv = shape
    q, k, v = rand(B, Lq, Hq, D), rand(B, Lk, Hk, D), rand(B, Lk, Hk, Dv)
    out, lse = impl(which, "attention")(q, k, v, causal=causal, return_lse=True)
    assert tuple(out.shape) == (B, Lq, Hq, Dv)
    assert tuple(lse.shape) == (B, Lq, Hq)
    out_ref, lse_ref = naive_attention(q, k, v, causal)
    assert_close(out, out_ref, 1e-12)
    if Lk == 0:
        assert torch.isneginf(lse).all() and (out == 0).all()
    else:
        assert_close(lse, lse_ref, 1e-12, "lse")


@pytest.mark.parametrize("which", IMPLS)
def test_attention_uniform_weights(which):
    """q = 0 gives uniform weights: out = mean of visible values, lse = log(#visible)."""
    Lq, Lk = 4, 6
    q, k, v = torch.zeros(1, Lq, 1, 3, dtype=torch.float64), rand(1, Lk, 1, 3), rand(1, Lk, 1, 5)
    out, lse = impl(which, "attention")(q, k, v, causal=True, return_lse=True)
    for i in range(Lq):
        n = i + Lk - Lq + 1
        assert_close(out[0, i, 0], v[0, :n, 0].mean(0), 1e-12)
        assert abs(lse[0, i, 0].item() - math.log(n)) < 1e-12


@pytest.mark.parametrize("which", IMPLS)
def test_attention_noncontiguous_inputs(which):
    """Strided (not last-dim) views are legal and give the same result."""
    base = rand(2, 5, 3, 8)
    q = base.transpose(0, 1).contiguous().transpose(0, 1)   # non-contiguous batch/seq strides
    k, v = rand(2, 4, 6, 8)[:, :, ::2], rand(2, 4, 3, 8)
    out = impl(which, "attention")(q, k, v, causal=True)
    out_ref, _ = naive_attention(q, k, v, causal=True)
    assert_close(out, out_ref, 1e-10)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("shape,causal", [((1, 3, 4, 2, 1, 3, 2), False), ((1, 4, 3, 2, 2, 3, 3), True),
                                          ((2, 3, 3, 2, 1, 2, 3), True)],
                         ids=["gqa", "causal-empty-rows", "causal"])
def test_attention_gradcheck_out(which, shape, causal):
    B, Lq, Lk, Hq, Hk, D, Dv = shape
    q, k, v = rand(B, Lq, Hq, D, requires_grad=True), rand(B, Lk, Hk, D, requires_grad=True), \
        rand(B, Lk, Hk, Dv, requires_grad=True)
    f = impl(which, "attention")
    assert torch.autograd.gradcheck(lambda q, k, v: f(q, k, v, causal=causal, scale=0.7), (q, k, v))


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("causal", [False, True])
def test_attention_gradcheck_lse(which, causal):
    # Lq <= Lk so that no row is empty (lse = -inf has no finite-difference derivative).
    q, k, v = rand(1, 3, 2, 3, requires_grad=True), rand(1, 4, 1, 3, requires_grad=True), \
        rand(1, 4, 1, 2, requires_grad=True)
    f = impl(which, "attention")
    assert torch.autograd.gradcheck(lambda q, k, v: f(q, k, v, causal=causal, return_lse=True)[1], (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: f(q, k, v, causal=causal, return_lse=True), (q, k, v))


@pytest.mark.parametrize("which", IMPLS)
def test_attention_grad_matches_naive_fp32(which):
    """Backward on fp32 inputs against autograd through a dense fp64 softmax."""
    B, Lq, Lk, Hq, Hk, D = 2, 5, 7, 4, 2, 8
    q, k, v = (rand(B, Lq, Hq, D, dtype=torch.float32, requires_grad=True),
               rand(B, Lk, Hk, D, dtype=torch.float32, requires_grad=True),
               rand(B, Lk, Hk, D, dtype=torch.float32, requires_grad=True))
    out, lse = impl(which, "attention")(q, k, v, causal=True, return_lse=True)
    go, gl = torch.randn_like(out), torch.randn_like(lse)
    torch.autograd.backward([out, lse], [go, gl])
    # dense fp64 definition with autograd
    q2, k2, v2 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    kk = k2.repeat_interleave(Hq // Hk, dim=2)
    vv = v2.repeat_interleave(Hq // Hk, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q2, kk) * D ** -0.5
    i = torch.arange(Lq)[:, None]
    j = torch.arange(Lk)[None, :]
    s = s.masked_fill(~(j <= i + Lk - Lq), float("-inf"))
    l2 = torch.logsumexp(s, -1)
    o2 = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), vv)
    torch.autograd.backward([o2, l2.transpose(1, 2)], [go.double(), gl.double()])
    for a, b, n in ((q.grad, q2.grad, "dq"), (k.grad, k2.grad, "dk"), (v.grad, v2.grad, "dv")):
        assert_close(a, b, 1e-4, n)


# ----------------------------------------------------------------------------- varlen


def cu(lens):
    c = [0]
    for n in lens:
        c.append(c[-1] + n)
    return torch.tensor(c, dtype=torch.int32)


def naive_varlen(q, k, v, lens_q, lens_k, causal=False, window=(-1, -1), scale=None):
    hq, hk, dv = q.shape[1], k.shape[1], v.shape[-1]
    scale = default_scale(q.shape[-1]) if scale is None else scale
    out = torch.zeros(q.shape[0], hq, dv, dtype=torch.float64)
    lse = torch.full((q.shape[0], hq), float("-inf"), dtype=torch.float64)
    q0 = k0 = 0
    for lq, lk in zip(lens_q, lens_k):
        for h in range(hq):
            g = h // (hq // hk)
            o, l = naive_rows(q[q0:q0 + lq, h], k[k0:k0 + lk, g], v[k0:k0 + lk, g],
                              lambda i: visible_range(i, lq, lk, causal, window), scale)
            out[q0:q0 + lq, h], lse[q0:q0 + lq, h] = o, l
        q0, k0 = q0 + lq, k0 + lk
    return out, lse


VARLEN_CASES = [
    # lens_q, lens_k
    ([3, 0, 5, 1], [3, 0, 5, 1]),       # self-attention with an empty sequence
    ([2, 4, 0, 3], [5, 0, 3, 2]),       # cross: Lk = 0 with queries (empty rows), Lq > Lk, Lq < Lk
    ([7], [7]),
    ([0, 0], [0, 0]),                   # nothing at all
    ([1, 6, 2], [4, 6, 9]),
]
WINDOWS = [(-1, -1), (2, 1), (0, 0), (-1, 2), (3, -1), (1, 0)]


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("lens", VARLEN_CASES, ids=lambda c: f"q{c[0]}k{c[1]}".replace(" ", ""))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_varlen_fp64(which, lens, causal, window):
    lens_q, lens_k = lens
    Hq, Hk, D, Dv = 4, 2, 6, 5
    q, k, v = rand(sum(lens_q), Hq, D), rand(sum(lens_k), Hk, D), rand(sum(lens_k), Hk, Dv)
    out, lse = impl(which, "varlen_attention")(
        q, k, v, cu(lens_q), cu(lens_k), max(lens_q), max(lens_k), causal=causal, window=window,
        return_lse=True)
    out_ref, lse_ref = naive_varlen(q, k, v, lens_q, lens_k, causal, window)
    assert tuple(out.shape) == (sum(lens_q), Hq, Dv) and out.dtype == torch.float64
    assert_close(out, out_ref, 1e-10)
    check_lse(lse, lse_ref, torch.float64, 1e-10)


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_varlen_low_precision(which, dtype):
    lens_q, lens_k = [5, 0, 9, 3], [5, 2, 9, 7]
    q, k, v = rand(sum(lens_q), 2, 16, dtype=dtype), rand(sum(lens_k), 1, 16, dtype=dtype), \
        rand(sum(lens_k), 1, 16, dtype=dtype)
    out, lse = impl(which, "varlen_attention")(q, k, v, cu(lens_q), cu(lens_k), 9, 9, causal=True,
                                               window=(4, -1), scale=0.5, return_lse=True)
    out_ref, lse_ref = naive_varlen(q, k, v, lens_q, lens_k, True, (4, -1), 0.5)
    assert out.dtype == dtype
    assert_close(out, out_ref, TOL[dtype])
    check_lse(lse, lse_ref, dtype, TOL[dtype])


@pytest.mark.parametrize("which", IMPLS)
def test_varlen_equals_dense_per_sequence(which):
    """Each packed sequence equals dense attention on that sequence alone (B = 1)."""
    lens = [4, 1, 6]
    q, k, v = rand(sum(lens), 2, 8), rand(sum(lens), 2, 8), rand(sum(lens), 2, 8)
    out = impl(which, "varlen_attention")(q, k, v, cu(lens), cu(lens), 6, 6, causal=True)
    s = 0
    for n in lens:
        ref, _ = naive_attention(q[None, s:s + n], k[None, s:s + n], v[None, s:s + n], causal=True)
        assert_close(out[s:s + n], ref[0], 1e-10)
        s += n


@pytest.mark.parametrize("which", IMPLS)
def test_varlen_max_seqlen_larger_than_needed(which):
    lens = [3, 5]
    q, k, v = rand(8, 2, 4), rand(8, 2, 4), rand(8, 2, 4)
    out = impl(which, "varlen_attention")(q, k, v, cu(lens), cu(lens), 16, 16)
    ref, _ = naive_varlen(q, k, v, lens, lens)
    assert_close(out, ref, 1e-10)


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (False, (1, 1)), (True, (2, -1))])
def test_varlen_gradcheck(which, causal, window):
    lens_q, lens_k = [2, 0, 3], [3, 2, 3]
    q = rand(sum(lens_q), 2, 3, requires_grad=True)
    k = rand(sum(lens_k), 1, 3, requires_grad=True)
    v = rand(sum(lens_k), 1, 2, requires_grad=True)
    f = impl(which, "varlen_attention")
    cq, ck = cu(lens_q), cu(lens_k)
    assert torch.autograd.gradcheck(
        lambda q, k, v: f(q, k, v, cq, ck, 3, 3, causal=causal, window=window, return_lse=True), (q, k, v))


# ----------------------------------------------------------------------------- unpad / pad


def make_mask(B, L):
    m = torch.rand(B, L) < 0.6
    m[0] = False          # an empty sequence
    if B > 1:
        m[1] = True       # a full one
    return m


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("shape", [(3, 5, 2, 4), (4, 7, 3), (2, 1, 1), (4, 7)], ids=str)
def test_unpad_values(which, shape):
    B, L = shape[:2]
    x = rand(*shape)
    mask = make_mask(B, L)
    packed, indices, cu_seqlens, max_seqlen = impl(which, "unpad")(x, mask)
    assert torch.equal(packed, x[mask])
    assert indices.dtype == torch.int64
    assert torch.equal(indices, torch.nonzero(mask.flatten()).flatten())
    assert cu_seqlens.dtype == torch.int32
    assert cu_seqlens.tolist() == cu(mask.sum(1).tolist()).tolist()
    assert isinstance(max_seqlen, int) and not isinstance(max_seqlen, bool)
    assert max_seqlen == int(mask.sum(1).max())


@pytest.mark.parametrize("which", IMPLS)
def test_unpad_pad_roundtrip(which):
    B, L = 4, 6
    x = rand(B, L, 3, 2)
    mask = make_mask(B, L)
    packed, indices, cu_seqlens, max_seqlen = impl(which, "unpad")(x, mask)
    back = impl(which, "pad")(packed, indices, B, L)
    assert tuple(back.shape) == (B, L, 3, 2)
    assert torch.equal(back, x * mask[:, :, None, None])
    # and the other direction: pad then unpad is the identity on packed tokens
    again = impl(which, "unpad")(back, mask)[0]
    assert torch.equal(again, packed)


@pytest.mark.parametrize("which", IMPLS)
def test_unpad_all_false(which):
    x = rand(2, 3, 4)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    packed, indices, cu_seqlens, max_seqlen = impl(which, "unpad")(x, mask)
    assert tuple(packed.shape) == (0, 4) and indices.numel() == 0
    assert cu_seqlens.tolist() == [0, 0, 0] and max_seqlen == 0
    back = impl(which, "pad")(packed, indices, 2, 3)
    assert torch.equal(back, torch.zeros_like(x))


@pytest.mark.parametrize("which", IMPLS)
def test_unpad_pad_gradients(which):
    B, L = 3, 4
    mask = make_mask(B, L)
    unpad, pad = impl(which, "unpad"), impl(which, "pad")
    x = rand(B, L, 2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: unpad(x, mask)[0], (x,))
    _, indices, _, _ = unpad(x.detach(), mask)
    xp = rand(int(mask.sum()), 2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda xp: pad(xp, indices, B, L), (xp,))
    # explicit: d unpad / dx scatters the packed gradient back, zeros at padding
    g = torch.randn(int(mask.sum()), 2, dtype=torch.float64)
    (gx,) = torch.autograd.grad(unpad(x, mask)[0], x, g)
    expect = torch.zeros(B, L, 2, dtype=torch.float64)
    expect[mask] = g
    assert torch.equal(gx, expect)


@pytest.mark.parametrize("which", IMPLS)
def test_unpad_varlen_pad_matches_dense(which):
    """The intended pipeline: unpad -> varlen (self) -> pad equals per-sequence dense attention."""
    B, L, H, D = 3, 5, 2, 4
    mask = make_mask(B, L)
    q, k, v = rand(B, L, H, D), rand(B, L, H, D), rand(B, L, H, D)
    unpad, pad = impl(which, "unpad"), impl(which, "pad")
    qp, idx, cs, mx = unpad(q, mask)
    kp, vp = unpad(k, mask)[0], unpad(v, mask)[0]
    o = pad(impl(which, "varlen_attention")(qp, kp, vp, cs, cs, mx, mx, causal=True), idx, B, L)
    for b in range(B):
        sel = mask[b]
        n = int(sel.sum())
        if n == 0:
            assert (o[b] == 0).all()
            continue
        ref, _ = naive_attention(q[b:b + 1, sel], k[b:b + 1, sel], v[b:b + 1, sel], causal=True)
        assert_close(o[b, sel], ref[0], 1e-10)
        assert (o[b, ~sel] == 0).all()


# ----------------------------------------------------------------------------- chunk boundaries


@pytest.mark.parametrize("which", IMPLS)
def test_attention_chunked(which, monkeypatch):
    """Tiny query chunks in the reference give the same forward and backward (causal, Lq > Lk)."""
    q, k, v = rand(2, 9, 2, 4), rand(2, 6, 1, 4), rand(2, 6, 1, 3)
    f = lambda q, k, v: impl(which, "attention")(q, k, v, causal=True, return_lse=True)  # noqa: E731
    out0, lse0, g0 = fwd_bwd(f, (q, k, v))
    force_small_chunks(monkeypatch)
    out, lse, g = fwd_bwd(f, (q, k, v))
    out_ref, lse_ref = naive_attention(q, k, v, causal=True)
    assert_close(out, out_ref, 1e-10)
    assert_close(lse, lse_ref, 1e-10, "lse")
    for a, b, n in zip(g, g0, ("dq", "dk", "dv")):
        assert_close(a, b, 1e-10, n)


@pytest.mark.parametrize("which", IMPLS)
def test_varlen_chunked(which, monkeypatch):
    lens_q, lens_k = [5, 0, 7, 2], [3, 4, 7, 6]
    q, k, v = rand(sum(lens_q), 2, 4), rand(sum(lens_k), 2, 4), rand(sum(lens_k), 2, 4)
    cq, ck = cu(lens_q), cu(lens_k)
    f = lambda q, k, v: impl(which, "varlen_attention")(q, k, v, cq, ck, 7, 7, causal=True, window=(2, -1),  # noqa: E731
                                                         return_lse=True)
    out0, lse0, g0 = fwd_bwd(f, (q, k, v))
    force_small_chunks(monkeypatch, 16)
    out, lse, g = fwd_bwd(f, (q, k, v))
    out_ref, lse_ref = naive_varlen(q, k, v, lens_q, lens_k, True, (2, -1))
    assert_close(out, out_ref, 1e-10)
    assert_close(lse, lse_ref, 1e-10, "lse")
    for a, b, n in zip(g, g0, ("dq", "dk", "dv")):
        assert_close(a, b, 1e-10, n)


@pytest.mark.parametrize("which", IMPLS)
def test_attention_grad_dtype(which):
    """Gradients come back in the inputs' dtype."""
    q, k, v = (rand(1, 4, 2, 8, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    out = impl(which, "attention")(q, k, v, causal=True)
    out.float().sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and t.grad.dtype == torch.bfloat16 and t.grad.shape == t.shape
        assert torch.isfinite(t.grad.float()).all()


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_attention_large_scores_stable(which, dtype):
    """Scores in the thousands: no overflow (softmax must subtract the row max)."""
    q, k, v = rand(1, 5, 2, 8, dtype=dtype), rand(1, 7, 2, 8, dtype=dtype), rand(1, 7, 2, 8, dtype=dtype)
    out, lse = impl(which, "attention")(q, k, v, scale=300.0, causal=True, return_lse=True)
    out_ref, lse_ref = naive_attention(q, k, v, causal=True, scale=300.0)
    assert torch.isfinite(out.float()).all() and torch.isfinite(lse).all()
    assert_close(out, out_ref, TOL[dtype])
    assert_close(lse, lse_ref, 1e-5, "lse")

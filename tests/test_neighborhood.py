"""Neighborhood attention (NATTEN semantics) against a naive float64 definition.

The naive neighbourhood below is written from DESIGN.md's words. Per axis, within a dilation
group (positions p with p % d == r, local index i = p // d, group length n):
  * non-causal: leader L = min(floor(i/s)*s + floor(s/2), n-1); keys start..start+k-1 with
    start = clamp(L - k//2, 0, n - k) (shifted, not clipped, at borders);
  * causal: leader L = min(floor(i/s)*s + s - 1, n-1); keys j with L - k < j <= i.
The neighbourhood of a query is the Cartesian product of its per-axis key sets.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import attnx
import attnx.reference
from conftest import TOL, assert_close, default_scale, force_small_chunks, fwd_bwd, naive_masked

IMPLS = ["reference", "api"]


def impl(which: str, name: str):
    return getattr(attnx.reference if which == "reference" else attnx, name)


# ----------------------------------------------------------------------------- naive


def axis_sets(n_axis: int, k: int, d: int = 1, s: int = 1, causal: bool = False) -> list[set]:
    """For each position p on an axis of length n_axis: the set of key positions it sees."""
    sets = []
    for p in range(n_axis):
        r, i = p % d, p // d
        n = len(range(r, n_axis, d))  # this dilation group's length
        if causal:
            lead = min((i // s) * s + s - 1, n - 1)
            local = [j for j in range(n) if lead - k < j <= i]
        else:
            lead = min((i // s) * s + s // 2, n - 1)
            start = min(max(lead - k // 2, 0), n - k)
            local = list(range(start, start + k))
        sets.append({j * d + r for j in local})
    return sets


def per_axis(x, rank):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,) * rank


def na_mask(spatial, kernel_size, dilation=1, stride=1, is_causal=False) -> torch.Tensor:
    """Dense bool mask [N, N] over row-major flattened spatial tokens."""
    rank = len(spatial)
    ks, ds, ss, cs = (per_axis(x, rank) for x in (kernel_size, dilation, stride, is_causal))
    sets = [axis_sets(spatial[a], ks[a], ds[a], ss[a], bool(cs[a])) for a in range(rank)]
    coords = list(itertools.product(*[range(n) for n in spatial]))
    flat = {c: f for f, c in enumerate(coords)}
    mask = torch.zeros(len(coords), len(coords), dtype=torch.bool)
    for qi, c in enumerate(coords):
        for kc in itertools.product(*[sorted(sets[a][c[a]]) for a in range(rank)]):
            mask[qi, flat[kc]] = True
    return mask


def naive_na(q, k, v, kernel_size, dilation=1, stride=1, is_causal=False, scale=None):
    spatial = tuple(q.shape[1:-2])
    B, H, D, Dv = q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]
    N = math.prod(spatial)
    mask = na_mask(spatial, kernel_size, dilation, stride, is_causal)
    scale = default_scale(D) if scale is None else scale
    qf, kf, vf = q.reshape(B, N, H, D), k.reshape(B, N, H, D), v.reshape(B, N, H, Dv)
    out = torch.zeros(B, N, H, Dv, dtype=torch.float64)
    lse = torch.zeros(B, N, H, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            out[b, :, h], lse[b, :, h] = naive_masked(qf[b, :, h], kf[b, :, h], vf[b, :, h], mask, scale)
    return out.reshape(B, *spatial, H, Dv), lse.reshape(B, *spatial, H)


def rand(*shape, dtype=torch.float64, requires_grad=False):
    return torch.randn(*shape, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)


def visible_from_output(f, spatial, kernel_size, **kw):
    """Recover the visibility mask from attnx itself: q = 0 gives uniform weights, v = one-hot
    of the key token, so out[i] = 1/|S(i)| on exactly the keys S(i)."""
    N = math.prod(spatial)
    q = torch.zeros(1, *spatial, 1, 4, dtype=torch.float64)
    k = torch.randn(1, *spatial, 1, 4, dtype=torch.float64)
    v = torch.eye(N, dtype=torch.float64).reshape(1, *spatial, 1, N)
    out, lse = f(q, k, v, kernel_size, return_lse=True, **kw)
    out = out.reshape(N, N)
    seen = out > 1e-12
    counts = seen.sum(1)
    # all visible keys have the same weight 1/count, lse = log(count)
    for i in range(N):
        assert torch.allclose(out[i][seen[i]], torch.full((int(counts[i]),), 1.0 / float(counts[i]),
                                                          dtype=torch.float64)), f"query {i}: non-uniform weights"
    assert torch.allclose(lse.reshape(N), torch.log(counts.double()))
    return seen


# ----------------------------------------------------------------------------- known NATTEN behaviour


def test_naive_spot_checks():
    """The naive definition itself reproduces known NATTEN neighbourhoods."""
    s = axis_sets(7, 3)
    assert s[0] == {0, 1, 2} and s[6] == {4, 5, 6} and s[3] == {2, 3, 4}
    s = axis_sets(6, 4)  # even kernel: 2 before the centre, 1 after
    assert s[3] == {1, 2, 3, 4} and s[0] == {0, 1, 2, 3} and s[5] == {2, 3, 4, 5}
    s = axis_sets(5, 3, causal=True)
    assert s[0] == {0} and s[1] == {0, 1} and s[4] == {2, 3, 4}
    s = axis_sets(7, 2, d=2)  # groups {0,2,4,6} and {1,3,5}
    assert s[5] == {3, 5} and s[1] == {1, 3} and s[6] == {4, 6}
    s = axis_sets(8, 4, s=4)  # blocked
    assert all(s[i] == {0, 1, 2, 3} for i in range(4)) and all(s[i] == {4, 5, 6, 7} for i in range(4, 8))


@pytest.mark.parametrize("which", IMPLS)
def test_natten_spot_check_1d(which):
    seen = visible_from_output(impl(which, "neighborhood_attention"), (7,), 3)
    assert set(torch.nonzero(seen[0]).flatten().tolist()) == {0, 1, 2}
    assert set(torch.nonzero(seen[6]).flatten().tolist()) == {4, 5, 6}
    assert set(torch.nonzero(seen[3]).flatten().tolist()) == {2, 3, 4}


# ----------------------------------------------------------------------------- visibility sets

# (spatial, kernel_size, dilation, stride, is_causal)
MASK_CASES = [
    ((7,), 3, 1, 1, False),
    ((7,), 3, 1, 1, True),
    ((8,), 4, 1, 1, False),      # even kernel
    ((8,), 4, 1, 1, True),
    ((9,), 5, 1, 1, False),
    ((7,), 2, 3, 1, False),      # dilation with n % d != 0: groups of length 3, 2, 2
    ((11,), 3, 3, 1, True),
    ((10,), 4, 2, 2, False),     # stride
    ((10,), 4, 1, 3, False),     # stride not dividing n
    ((10,), 4, 1, 3, True),
    ((8,), 4, 1, 4, False),      # blocked (stride == kernel)
    ((9,), 3, 1, 3, True),       # blocked causal
    ((6,), 6, 1, 1, False),      # kernel == axis
    ((5, 6), (3, 4), 1, 1, False),
    ((5, 6), 3, (1, 2), 1, (True, False)),
    ((6, 5), (2, 3), (2, 1), (2, 1), (False, True)),
    ((7, 4), (3, 2), (2, 1), (3, 2), (True, True)),
    ((3, 4, 5), (2, 3, 3), 1, 1, (False, True, False)),
    ((4, 3, 5), (2, 3, 2), (2, 1, 2), (2, 3, 1), (True, False, False)),
]


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("case", MASK_CASES, ids=lambda c: f"{c[0]}-k{c[1]}-d{c[2]}-s{c[3]}-c{c[4]}".replace(" ", ""))
def test_visible_sets(which, case):
    spatial, ks, dil, st, causal = case
    seen = visible_from_output(impl(which, "neighborhood_attention"), spatial, ks, dilation=dil, stride=st,
                               is_causal=causal)
    expected = na_mask(spatial, ks, dil, st, causal)
    if not torch.equal(seen, expected):
        i = int(torch.nonzero((seen != expected).any(1))[0])
        raise AssertionError(f"query {i}: sees {torch.nonzero(seen[i]).flatten().tolist()}, expected "
                             f"{torch.nonzero(expected[i]).flatten().tolist()}")


def test_noncausal_sees_exactly_k():
    """Shifted, not clipped: every non-causal query sees exactly prod(kernel_size) keys (naive)."""
    m = na_mask((7, 9), (3, 4), (2, 1), 1, False)
    assert (m.sum(1) == 12).all()


# ----------------------------------------------------------------------------- values

VALUE_CASES = [
    ((9,), 3, 1, 1, False),
    ((10,), 4, 2, 1, True),
    ((11,), 5, 2, 2, False),
    ((5, 6), (3, 2), (1, 2), (1, 2), (False, True)),
    ((4, 7), 3, (1, 2), (3, 1), (True, False)),
    ((3, 4, 5), (3, 2, 3), 1, (1, 2, 1), False),
    ((4, 4, 3), 2, (2, 1, 1), 2, (True, True, True)),
]


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("case", VALUE_CASES, ids=lambda c: f"{c[0]}-k{c[1]}-d{c[2]}-s{c[3]}-c{c[4]}".replace(" ", ""))
def test_na_fp64(which, case):
    spatial, ks, dil, st, causal = case
    B, H, D, Dv = 2, 2, 8, 6
    q, k, v = rand(B, *spatial, H, D), rand(B, *spatial, H, D), rand(B, *spatial, H, Dv)
    out, lse = impl(which, "neighborhood_attention")(q, k, v, ks, dilation=dil, stride=st, is_causal=causal,
                                                     return_lse=True)
    out_ref, lse_ref = naive_na(q, k, v, ks, dil, st, causal)
    assert out.dtype == torch.float64 and tuple(out.shape) == (B, *spatial, H, Dv)
    assert tuple(lse.shape) == (B, *spatial, H)
    assert_close(out, out_ref, 1e-10)
    assert_close(lse, lse_ref, 1e-10, "lse")


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_na_low_precision(which, dtype):
    spatial, ks, dil, st, causal = (6, 5), (3, 3), (2, 1), (1, 3), (False, True)
    q, k, v = (rand(2, *spatial, 2, 16, dtype=dtype) for _ in range(3))
    out, lse = impl(which, "neighborhood_attention")(q, k, v, ks, dilation=dil, stride=st, is_causal=causal,
                                                     scale=0.4, return_lse=True)
    out_ref, lse_ref = naive_na(q, k, v, ks, dil, st, causal, scale=0.4)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close(out, out_ref, TOL[dtype])
    assert_close(lse, lse_ref, 1e-4, "lse")


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("fixed,spatial,ks", [("na1d", (7,), 3), ("na2d", (4, 5), (3, 2)), ("na3d", (3, 3, 4), (2, 3, 3))])
def test_fixed_rank_entry_points(which, fixed, spatial, ks):
    q, k, v = (rand(1, *spatial, 2, 4) for _ in range(3))
    a = impl(which, fixed)(q, k, v, ks, is_causal=True)
    b = impl(which, "neighborhood_attention")(q, k, v, ks, is_causal=True)
    assert torch.equal(a, b)
    out_ref, _ = naive_na(q, k, v, ks, 1, 1, True)
    assert_close(a, out_ref, 1e-10)


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("spatial", [(6,), (3, 4), (2, 3, 3)], ids=str)
def test_kernel_equals_axis_is_full_attention(which, spatial):
    B, H, D = 2, 3, 5
    q, k, v = (rand(B, *spatial, H, D) for _ in range(3))
    out, lse = impl(which, "neighborhood_attention")(q, k, v, tuple(spatial), return_lse=True)
    N = math.prod(spatial)
    qf, kf, vf = (t.reshape(B, N, H, D) for t in (q, k, v))
    s = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * D ** -0.5
    dense = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), vf)
    assert_close(out.reshape(B, N, H, D), dense, 1e-10)
    assert_close(lse.reshape(B, N, H), torch.logsumexp(s, -1).transpose(1, 2), 1e-10, "lse")


@pytest.mark.parametrize("which", IMPLS)
def test_blocked_equals_block_diagonal(which):
    """stride == kernel_size dividing the axis is blocked attention: dense attention per block."""
    n, kk = 8, 4
    q, k, v = (rand(1, n, 2, 4) for _ in range(3))
    out = impl(which, "na1d")(q, k, v, kk, stride=kk)
    for blk in range(n // kk):
        sl = slice(blk * kk, (blk + 1) * kk)
        s = torch.einsum("qhd,khd->hqk", q[0, sl], k[0, sl]) * 0.5
        ref = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v[0, sl])
        assert_close(out[0, sl], ref, 1e-10)


@pytest.mark.parametrize("which", IMPLS)
def test_kernel_tuple_equals_int(which):
    q, k, v = (rand(1, 5, 6, 2, 4) for _ in range(3))
    f = impl(which, "neighborhood_attention")
    a = f(q, k, v, 3, dilation=1, stride=1, is_causal=False)
    b = f(q, k, v, (3, 3), dilation=(1, 1), stride=(1, 1), is_causal=(False, False))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("case", [((5,), 3, 1, 1, False), ((6,), 2, 2, 1, True), ((3, 4), (2, 3), (1, 1), (2, 1), (True, False)),
                                  ((2, 2, 3), (2, 1, 2), 1, 1, (False, False, True))],
                         ids=lambda c: f"{c[0]}-k{c[1]}".replace(" ", ""))
def test_na_gradcheck(which, case):
    spatial, ks, dil, st, causal = case
    q, k, v = (rand(1, *spatial, 1, 3, requires_grad=True) for _ in range(3))
    f = impl(which, "neighborhood_attention")
    assert torch.autograd.gradcheck(
        lambda q, k, v: f(q, k, v, ks, dilation=dil, stride=st, is_causal=causal, return_lse=True), (q, k, v))


@pytest.mark.parametrize("which", IMPLS)
def test_na_chunked(which, monkeypatch):
    """Tiny query chunks in the reference give the same forward and backward."""
    spatial, ks, dil, st, causal = (5, 6), (3, 2), (1, 2), (2, 1), (True, False)
    q, k, v = (rand(2, *spatial, 2, 4) for _ in range(3))
    f = lambda q, k, v: impl(which, "neighborhood_attention")(  # noqa: E731
        q, k, v, ks, dilation=dil, stride=st, is_causal=causal, return_lse=True)
    out0, lse0, g0 = fwd_bwd(f, (q, k, v))
    force_small_chunks(monkeypatch, 64)
    out, lse, g = fwd_bwd(f, (q, k, v))
    out_ref, lse_ref = naive_na(q, k, v, ks, dil, st, causal)
    assert_close(out, out_ref, 1e-10)
    assert_close(lse, lse_ref, 1e-10, "lse")
    for a, b, n in zip(g, g0, ("dq", "dk", "dv")):
        assert_close(a, b, 1e-10, n)


@pytest.mark.parametrize("spatial,ks,dil,st,ca,classes", [
    ((12,), (3,), (4,), (1,), (False,), 1),
    ((7,), (2,), (3,), (1,), (False,), 2),  # groups of length 3, 2, 2
    ((8, 12), (3, 2), (2, 3), (1, 2), (False, True), 1),
    ((9, 12), (3, 2), (2, 5), (1, 2), (False, True), 4),
    ((4, 6, 9), (2, 3, 3), (2, 2, 3), (1, 1, 2), (True, False, False), 1),
    ((5, 7, 11), (2, 3, 3), (2, 2, 3), (1, 1, 2), (True, False, False), 8),
    ((25, 30), (5, 7), (2, 1), (1, 1), (False, False), 2),
])
def test_dilation_groups_in_the_batch_are_plain_na(spatial, ks, dil, st, ca, classes):
    """What the native dilated path computes: NA over the batches of dilation groups (no dilation,
    one batch per combination of group lengths), put back in place, is dilated NA; the moves
    invert each other."""
    from attnx.ops.neighborhood import DilationSplit
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, *spatial, 3, 8, dtype=torch.float64) for _ in range(3))
    out, lse = attnx.reference.neighborhood_attention(q, k, v, ks, dilation=dil, stride=st, is_causal=ca,
                                                      return_lse=True)
    split = DilationSplit(spatial, dil, q.device)
    assert len(split.classes) == classes
    parts = [attnx.reference.neighborhood_attention(qg, kg, vg, ks, stride=st, is_causal=ca, return_lse=True)
             for qg, kg, vg in zip(split.gather(q), split.gather(k), split.gather(v))]
    og, lg = (split.scatter(list(ys), 2, spatial) for ys in zip(*parts))
    assert torch.equal(split.scatter(split.gather(q), 2, spatial), q)
    assert torch.allclose(og, out, atol=1e-12)
    assert torch.allclose(lg, lse, atol=1e-12)

"""Sparse attention (each query attends to exactly its listed keys) against a naive definition.

Contract: q [B, Lq, H, D], k/v [B, Lk, H, D]; indices int32 [B, Lq, H, k], -1 = empty slot, no
duplicates; softmax over the listed keys only; an all -1 row gives out 0 and lse -inf.
"""
from __future__ import annotations

import pytest
import torch

import attnx
import attnx.reference
from conftest import TOL, assert_close, default_scale, force_small_chunks, fwd_bwd, naive_rows

IMPLS = ["reference", "api"]


def impl(which: str, name: str):
    return getattr(attnx.reference if which == "reference" else attnx, name)


def naive_sparse(q, k, v, indices, scale=None):
    B, Lq, H, D = q.shape
    scale = default_scale(D) if scale is None else scale
    out = torch.zeros(B, Lq, H, v.shape[-1], dtype=torch.float64)
    lse = torch.zeros(B, Lq, H, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            rows = indices[b, :, h].tolist()
            out[b, :, h], lse[b, :, h] = naive_rows(q[b, :, h], k[b, :, h], v[b, :, h],
                                                    lambda i: [j for j in rows[i] if j >= 0], scale)
    return out, lse


def random_indices(B, Lq, H, Lk, kk, *, empty_frac=0.25, empty_rows=True):
    """Distinct keys per row in random order, some -1 slots (anywhere in the row), some empty rows."""
    idx = torch.empty(B, Lq, H, kk, dtype=torch.int32)
    for b in range(B):
        for i in range(Lq):
            for h in range(H):
                row = torch.randperm(Lk)[:kk].to(torch.int32)
                if row.numel() < kk:
                    row = torch.cat([row, torch.full((kk - row.numel(),), -1, dtype=torch.int32)])
                drop = torch.rand(kk) < empty_frac
                row[drop] = -1
                idx[b, i, h] = row[torch.randperm(kk)]
    if empty_rows:
        idx[0, 0, 0] = -1
    return idx


def rand(*shape, dtype=torch.float64, requires_grad=False):
    return torch.randn(*shape, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)


# (B, Lq, Lk, H, D, Dv, k)
CASES = [
    (2, 6, 9, 2, 8, 8, 4),
    (1, 9, 5, 3, 5, 5, 5),   # k == Lk
    (2, 4, 12, 1, 4, 4, 1),  # single key
    (1, 3, 4, 2, 4, 4, 6),   # k > Lk: trailing -1 slots
    (1, 5, 7, 2, 6, 3, 3),   # Dv != D
]


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_sparse_fp64(which, case):
    B, Lq, Lk, H, D, Dv, kk = case
    q, k, v = rand(B, Lq, H, D), rand(B, Lk, H, D), rand(B, Lk, H, Dv)
    indices = random_indices(B, Lq, H, Lk, kk)
    out, lse = impl(which, "sparse_attention")(q, k, v, indices, return_lse=True)
    out_ref, lse_ref = naive_sparse(q, k, v, indices)
    assert tuple(out.shape) == (B, Lq, H, Dv) and out.dtype == torch.float64
    assert tuple(lse.shape) == (B, Lq, H)
    assert_close(out, out_ref, 1e-10)
    assert_close(lse, lse_ref, 1e-10, "lse")


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_sparse_low_precision(which, dtype):
    B, Lq, Lk, H, D, kk = 2, 8, 16, 2, 16, 6
    q, k, v = (rand(B, L, H, D, dtype=dtype) for L in (Lq, Lk, Lk))
    indices = random_indices(B, Lq, H, Lk, kk)
    out, lse = impl(which, "sparse_attention")(q, k, v, indices, scale=0.35, return_lse=True)
    out_ref, lse_ref = naive_sparse(q, k, v, indices, scale=0.35)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close(out, out_ref, TOL[dtype])
    assert_close(lse, lse_ref, 1e-4, "lse")


@pytest.mark.parametrize("which", IMPLS)
def test_sparse_all_empty_row(which):
    q, k, v = rand(1, 3, 2, 4), rand(1, 5, 2, 4), rand(1, 5, 2, 4)
    indices = torch.tensor([[[[0, 2], [-1, -1]], [[-1, -1], [-1, -1]], [[4, -1], [-1, 1]]]], dtype=torch.int32)
    out, lse = impl(which, "sparse_attention")(q, k, v, indices, return_lse=True)
    assert (out[0, 1] == 0).all() and torch.isneginf(lse[0, 1]).all()
    assert (out[0, 0, 1] == 0).all() and torch.isneginf(lse[0, 0, 1])
    # a single listed key: out is exactly that value row
    assert_close(out[0, 2, 0], v[0, 4, 0], 1e-12, "single key")
    assert_close(out[0, 2, 1], v[0, 1, 1], 1e-12, "single key")
    out_ref, lse_ref = naive_sparse(q, k, v, indices)
    assert_close(out, out_ref, 1e-10)
    assert_close(lse, lse_ref, 1e-10, "lse")


@pytest.mark.parametrize("which", IMPLS)
def test_sparse_all_keys_is_dense(which):
    B, Lq, Lk, H, D = 2, 4, 6, 2, 4
    q, k, v = rand(B, Lq, H, D), rand(B, Lk, H, D), rand(B, Lk, H, D)
    indices = torch.arange(Lk, dtype=torch.int32).flip(0).expand(B, Lq, H, Lk).contiguous()
    out = impl(which, "sparse_attention")(q, k, v, indices)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * 0.5
    assert_close(out, torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), v), 1e-10)


@pytest.mark.parametrize("which", IMPLS)
def test_sparse_order_irrelevant(which):
    q, k, v = rand(1, 4, 2, 4), rand(1, 8, 2, 4), rand(1, 8, 2, 4)
    indices = random_indices(1, 4, 2, 8, 5, empty_rows=False)
    f = impl(which, "sparse_attention")
    a = f(q, k, v, indices)
    b = f(q, k, v, indices.flip(-1).contiguous())
    assert_close(a, b, 1e-12)


@pytest.mark.parametrize("which", IMPLS)
def test_sparse_gradcheck(which):
    q = rand(1, 3, 2, 3, requires_grad=True)
    k = rand(1, 5, 2, 3, requires_grad=True)
    v = rand(1, 5, 2, 2, requires_grad=True)
    f = impl(which, "sparse_attention")
    idx = random_indices(1, 3, 2, 5, 3, empty_rows=False)
    # make sure no row is empty for the lse check
    for i in range(3):
        for h in range(2):
            if (idx[0, i, h] < 0).all():
                idx[0, i, h, 0] = i
    assert torch.autograd.gradcheck(lambda q, k, v: f(q, k, v, idx, return_lse=True), (q, k, v))
    # out only, with an empty row (its gradient is zero)
    idx2 = idx.clone()
    idx2[0, 1, 0] = -1
    assert torch.autograd.gradcheck(lambda q, k, v: f(q, k, v, idx2), (q, k, v))


@pytest.mark.parametrize("which", IMPLS)
def test_sparse_chunked(which, monkeypatch):
    q, k, v = rand(2, 9, 2, 4), rand(2, 7, 2, 4), rand(2, 7, 2, 4)
    indices = random_indices(2, 9, 2, 7, 4)
    f = lambda q, k, v: impl(which, "sparse_attention")(q, k, v, indices, return_lse=True)  # noqa: E731
    out0, lse0, g0 = fwd_bwd(f, (q, k, v))
    force_small_chunks(monkeypatch, 64)
    out, lse, g = fwd_bwd(f, (q, k, v))
    out_ref, lse_ref = naive_sparse(q, k, v, indices)
    assert_close(out, out_ref, 1e-10)
    assert_close(lse, lse_ref, 1e-10, "lse")
    for a, b, n in zip(g, g0, ("dq", "dk", "dv")):
        assert_close(a, b, 1e-10, n)


def test_sparse_query_order_does_not_change_the_result():
    """query_order only changes how the native forward tiles queries: the reference ignores it
    after checking it."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 20, 3, 16, dtype=torch.float64) for _ in range(3))
    idx = torch.rand(2, 20, 3, 20).topk(5, dim=-1).indices.int()
    order = torch.rand(2, 3, 20).argsort(dim=-1).int()
    a = torch.ops.attnx.sparse_attention(q, k, v, idx, None)
    b = torch.ops.attnx.sparse_attention(q, k, v, idx, None, order)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("bad", ["shape", "dtype", "not_a_permutation"])
def test_sparse_bad_query_order(bad):
    q, k, v = (torch.randn(1, 8, 2, 16) for _ in range(3))
    idx = torch.rand(1, 8, 2, 8).topk(3, dim=-1).indices.int()
    order = torch.arange(8, dtype=torch.int32).expand(1, 2, 8).contiguous()
    if bad == "shape":
        order = order.transpose(1, 2).contiguous()
    elif bad == "dtype":
        order = order.long()
    else:
        order = order.clone()
        order[0, 1, 3] = 2
    with pytest.raises(ValueError, match="query_order"):
        torch.ops.attnx.sparse_attention(q, k, v, idx, None, order)


def test_similar_lists_order_groups_equal_lists():
    """Queries with the same list get the same MinHash pair, so each group is contiguous."""
    from attnx.ops.sparse import similar_lists_order
    torch.manual_seed(1)
    lists = torch.rand(6, 500).topk(20, dim=-1).indices.int()
    group = torch.randint(0, 6, (2, 300, 3))
    idx = lists[group]
    idx[0, 5, 1, 3] = -1  # an empty slot does not count
    order = similar_lists_order(idx, 500)
    assert order.shape == (2, 3, 300) and order.dtype == torch.int32
    assert torch.equal(order.sort(dim=-1).values, torch.arange(300, dtype=torch.int32).expand(2, 3, 300))
    for b in range(2):
        for h in range(3):
            g = group[b, :, h][order[b, h].long()]
            assert (g[1:] != g[:-1]).sum().item() <= 6  # 6 groups: at most 5 changes (+1: the row with -1)


def test_tile_unions_reference():
    """The tiled kernels' pre-pass, as the reference computes it: per tile of 128 ordered queries the
    union of their valid keys in ascending order, and bit c % 128 of chunk c // 128 in row r set
    exactly when query order[r] lists union key c."""
    from attnx.ops.sparse import TILE_M, parse_tile_unions
    torch.manual_seed(3)
    b, lq, h, lk, kk = 2, 200, 2, 300, 40
    idx = torch.rand(b, lq, h, lk).topk(kk, dim=-1).indices.int()
    idx[:, ::5, :, ::3] = -1
    idx[0, 7, 1, 0] = lk + 4  # outside [0, Lk): empty
    order = torch.rand(b, h, lq).argsort(dim=-1).int()
    ws = torch.ops.attnx.sparse_tile_unions(idx, order, lk)
    counts, keys, masks = parse_tile_unions(ws, idx, lk)
    m_tiles = -(-lq // TILE_M)
    for bb in range(b):
        for hh in range(h):
            for m in range(m_tiles):
                t = (bb * h + hh) * m_tiles + m
                rows = order[bb, hh, m * TILE_M:(m + 1) * TILE_M].long()
                lists = [set(x for x in idx[bb, i, hh].tolist() if 0 <= x < lk) for i in rows.tolist()]
                union = sorted(set().union(*lists))
                n = counts[t].item()
                assert n == len(union) and keys[t, :n].tolist() == union
                bits = masks[t].long() & 0xFFFFFFFF  # [chunks, 128 rows, 4 words]
                for r in range(TILE_M):
                    for c, key in enumerate(union):
                        on = bool((bits[c // 128, r, (c % 128) // 32] >> (c % 32)) & 1)
                        assert on == (r < len(lists) and key in lists[r]), (t, r, c)

"""Block-sparse attention against naive masked dense attention (float64).

Contract: q/k/v [B, L, H, D]; Q tile t = tokens [t*q_block, min((t+1)*q_block, Lq)); KV tile j =
tokens [j*kv_block, min((j+1)*kv_block, Lk)); Q tile t of (b, h) visits the KV tiles
kv_block_index[b, h, t, :kv_block_count[b, h, t]] (batch/head dim of size 1 broadcasts) with one
softmax over all their keys; a tile that visits nothing gives out 0 and lse -inf.
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


def cdiv(a, b):
    return -(-a // b)


def naive_block_sparse(q, k, v, index, count, q_block, kv_block, scale=None):
    B, Lq, H, D = q.shape
    Lk, Dv = k.shape[1], v.shape[-1]
    scale = default_scale(D) if scale is None else scale
    out = torch.zeros(B, Lq, H, Dv, dtype=torch.float64)
    lse = torch.zeros(B, Lq, H, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            bi, hi = (b if index.shape[0] > 1 else 0), (h if index.shape[1] > 1 else 0)

            def visible(i):
                t = i // q_block
                keys = []
                for j in index[bi, hi, t, : int(count[bi, hi, t])].tolist():
                    keys.extend(range(j * kv_block, min((j + 1) * kv_block, Lk)))
                return keys

            out[b, :, h], lse[b, :, h] = naive_rows(q[b, :, h], k[b, :, h], v[b, :, h], visible, scale)
    return out, lse


def random_layout(Bi, Hi, n_q_tiles, n_kv_tiles, max_count, *, allow_zero=True, gen=None):
    """Random distinct KV tiles per Q tile; unused slots hold in-range junk (must be ignored)."""
    index = torch.zeros(Bi, Hi, n_q_tiles, max_count, dtype=torch.int32)
    count = torch.zeros(Bi, Hi, n_q_tiles, dtype=torch.int32)
    for b in range(Bi):
        for h in range(Hi):
            for t in range(n_q_tiles):
                lo = 0 if allow_zero else 1
                c = int(torch.randint(lo, min(max_count, n_kv_tiles) + 1, (1,), generator=gen))
                perm = torch.randperm(n_kv_tiles, generator=gen)
                index[b, h, t, :c] = perm[:c].to(torch.int32)
                # junk after count: a repeat of a valid tile id (in range, duplicate) - must be ignored
                if c < max_count:
                    index[b, h, t, c:] = int(perm[0])
                count[b, h, t] = c
    return index, count


def rand(*shape, dtype=torch.float64, requires_grad=False):
    return torch.randn(*shape, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)


# (B, L, H, D, Dv, q_block, kv_block, max_count, layout batch/head dims)
CASES = [
    (2, 16, 2, 8, 8, 4, 4, 3, "BH"),
    (2, 13, 3, 6, 5, 4, 3, 3, "BH"),   # partial last Q tile and KV tile, Dv != D
    (1, 10, 2, 4, 4, 3, 5, 2, "1H"),   # q_block != kv_block
    (3, 9, 2, 4, 4, 2, 4, 3, "B1"),    # broadcast over heads
    (2, 7, 2, 4, 4, 7, 2, 4, "11"),    # one Q tile, broadcast over batch and head
    (1, 5, 1, 4, 4, 1, 1, 5, "BH"),    # tile size 1: token-level sparse
]


def layout_dims(kind, B, H):
    return (B if kind[0] == "B" else 1), (H if kind[1] == "H" else 1)


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_block_sparse_fp64(which, case):
    B, L, H, D, Dv, qb, kb, mc, kind = case
    q, k, v = rand(B, L, H, D), rand(B, L, H, D), rand(B, L, H, Dv)
    index, count = random_layout(*layout_dims(kind, B, H), cdiv(L, qb), cdiv(L, kb), mc)
    out, lse = impl(which, "block_sparse_attention")(q, k, v, index, count, q_block=qb, kv_block=kb,
                                                     return_lse=True)
    out_ref, lse_ref = naive_block_sparse(q, k, v, index, count, qb, kb)
    assert tuple(out.shape) == (B, L, H, Dv) and out.dtype == torch.float64
    assert tuple(lse.shape) == (B, L, H)
    assert_close(out, out_ref, 1e-10)
    assert_close(lse, lse_ref, 1e-10, "lse")


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_block_sparse_low_precision(which, dtype):
    B, L, H, D, qb, kb = 2, 24, 2, 16, 8, 4
    q, k, v = (rand(B, L, H, D, dtype=dtype) for _ in range(3))
    index, count = random_layout(B, H, cdiv(L, qb), cdiv(L, kb), 4, allow_zero=False)
    out, lse = impl(which, "block_sparse_attention")(q, k, v, index, count, q_block=qb, kv_block=kb, scale=0.3,
                                                     return_lse=True)
    out_ref, lse_ref = naive_block_sparse(q, k, v, index, count, qb, kb, scale=0.3)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close(out, out_ref, TOL[dtype])
    assert_close(lse, lse_ref, 1e-4, "lse")


@pytest.mark.parametrize("which", IMPLS)
def test_block_sparse_count_zero(which):
    B, L, H, D = 1, 8, 2, 4
    q, k, v = rand(B, L, H, D), rand(B, L, H, D), rand(B, L, H, D)
    index = torch.tensor([[[[0, 1], [1, 0]], [[1, 0], [0, 1]]]], dtype=torch.int32)  # [1, 2, 2, 2]
    count = torch.tensor([[[0, 2], [1, 0]]], dtype=torch.int32)
    out, lse = impl(which, "block_sparse_attention")(q, k, v, index, count, q_block=4, kv_block=4, return_lse=True)
    assert (out[0, :4, 0] == 0).all() and torch.isneginf(lse[0, :4, 0]).all()
    assert (out[0, 4:, 1] == 0).all() and torch.isneginf(lse[0, 4:, 1]).all()
    out_ref, lse_ref = naive_block_sparse(q, k, v, index, count, 4, 4)
    assert_close(out, out_ref, 1e-10)
    assert_close(lse, lse_ref, 1e-10, "lse")


@pytest.mark.parametrize("which", IMPLS)
def test_block_sparse_all_tiles_is_dense(which):
    B, L, H, D = 2, 11, 2, 4
    q, k, v = rand(B, L, H, D), rand(B, L, H, D), rand(B, L, H, D)
    nq, nk = cdiv(L, 4), cdiv(L, 3)
    index = torch.arange(nk, dtype=torch.int32).flip(0).expand(1, 1, nq, nk).contiguous()
    count = torch.full((1, 1, nq), nk, dtype=torch.int32)
    out = impl(which, "block_sparse_attention")(q, k, v, index, count, q_block=4, kv_block=3)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * 0.5
    ref = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), v)
    assert_close(out, ref, 1e-10)


@pytest.mark.parametrize("which", IMPLS)
def test_block_sparse_broadcast_equals_expanded(which):
    """A layout with batch/head dims of size 1 equals the same layout expanded explicitly."""
    B, L, H, D = 2, 12, 3, 4
    q, k, v = rand(B, L, H, D), rand(B, L, H, D), rand(B, L, H, D)
    index, count = random_layout(1, 1, 3, 4, 2)
    f = impl(which, "block_sparse_attention")
    a = f(q, k, v, index, count, q_block=4, kv_block=3)
    b = f(q, k, v, index.expand(B, H, -1, -1).contiguous(), count.expand(B, H, -1).contiguous(), q_block=4, kv_block=3)
    assert_close(a, b, 1e-12)


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("case", [(1, 7, 2, 3, 3, 2, 3, "BH"), (2, 5, 1, 2, 2, 3, 2, "11")],
                         ids=["BH", "broadcast"])
def test_block_sparse_gradcheck(which, case):
    B, L, H, D, qb, kb, mc, kind = case
    q, k, v = (rand(B, L, H, D, requires_grad=True) for _ in range(3))
    index, count = random_layout(*layout_dims(kind, B, H), cdiv(L, qb), cdiv(L, kb), mc, allow_zero=False)
    f = impl(which, "block_sparse_attention")
    assert torch.autograd.gradcheck(
        lambda q, k, v: f(q, k, v, index, count, q_block=qb, kv_block=kb, return_lse=True), (q, k, v))
    # and with an empty tile (out only: lse = -inf there)
    count0 = count.clone()
    count0.view(-1)[0] = 0
    assert torch.autograd.gradcheck(
        lambda q, k, v: f(q, k, v, index, count0, q_block=qb, kv_block=kb), (q, k, v))


@pytest.mark.parametrize("which", IMPLS)
def test_block_sparse_chunked(which, monkeypatch):
    """Tiny query chunks (not aligned with Q tiles) give the same forward and backward."""
    B, L, H, D, qb, kb = 2, 13, 2, 4, 4, 3
    q, k, v = (rand(B, L, H, D) for _ in range(3))
    index, count = random_layout(B, 1, cdiv(L, qb), cdiv(L, kb), 3)
    f = lambda q, k, v: impl(which, "block_sparse_attention")(  # noqa: E731
        q, k, v, index, count, q_block=qb, kv_block=kb, return_lse=True)
    out0, lse0, g0 = fwd_bwd(f, (q, k, v))
    force_small_chunks(monkeypatch, 64)
    out, lse, g = fwd_bwd(f, (q, k, v))
    out_ref, lse_ref = naive_block_sparse(q, k, v, index, count, qb, kb)
    assert_close(out, out_ref, 1e-10)
    assert_close(lse, lse_ref, 1e-10, "lse")
    for a, b, n in zip(g, g0, ("dq", "dk", "dv")):
        assert_close(a, b, 1e-10, n)

"""GPU tests of the native sparse attention (each query attends to its listed keys): forward and
backward against the reference on random lists (slots empty anywhere, rows with no key, keys
listed by no query), GQA, strided views, the lse gradient, determinism of dK/dV, the value checks.
Outputs are poisoned (NaN) before each call.
"""
from __future__ import annotations

import pytest
import torch

import attnx
import attnx.reference
from attnx import _native
from conftest import names_arg, rel_err
from test_gpu_attention import GRAD_TOL, LSE_TOL, OUT_TOL, built, poison_allocator

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not _native.has_cuda_kernel("sparse_attention"),
    reason="needs a CUDA GPU and the native library")

DTYPES = [torch.float16, torch.bfloat16]


def need(dtype, d, backward=False):
    fams = ["sparse_fwd"] + (["sparse_bwd"] if backward else [])
    if torch.cuda.get_device_capability() != (9, 0) or not all(built(dtype, d, f) for f in fams):
        pytest.skip("no native sparse instance for this dtype / head dim on this GPU")


def random_indices(b, lq, hq, lk, kk, *, empty_frac=0.25, empty_rows=True):
    """Distinct random keys per row, about empty_frac of the slots -1, every 7th row empty."""
    kk_real = min(kk, lk)
    idx = torch.full((b, lq, hq, kk), -1, dtype=torch.int32, device="cuda")
    if lk > 0 and kk_real > 0:
        idx[..., :kk_real] = torch.rand(b, lq, hq, lk, device="cuda").topk(kk_real, dim=-1).indices.int()
        idx = idx.gather(-1, torch.rand(b, lq, hq, kk, device="cuda").argsort(dim=-1))  # -1 anywhere in the row
        idx = idx.masked_fill(torch.rand(b, lq, hq, kk, device="cuda") < empty_frac, -1)
    if empty_rows and lq > 0:
        idx[:, ::7] = -1
    return idx


def reference(q, k, v, idx, dout=None, dlse=None):
    qf, kf, vf = (x.detach().float().requires_grad_() for x in (q, k, v))
    out, lse = attnx.reference.sparse_attention(qf, kf, vf, idx, return_lse=True)
    if dout is None:
        return out, lse
    loss = (out * dout.float()).sum() + ((torch.where(torch.isinf(lse), 0, lse) * dlse).sum() if dlse is not None else 0)
    return out, lse, torch.autograd.grad(loss, (qf, kf, vf))


def check_forward(out, lse, ref_out, ref_lse, dtype):
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "empty rows differ"
    empty = torch.isinf(ref_lse)
    assert (out.float()[empty] == 0).all(), "a row without keys must give zeros"
    if (~empty).any():
        assert rel_err(out, ref_out) < OUT_TOL[dtype]
        assert (lse[~empty] - ref_lse[~empty]).abs().max().item() < LSE_TOL


SHAPES = [  # b, lq, lk, hq, hk, k
    (1, 1, 1, 1, 1, 1),
    (2, 37, 53, 3, 3, 5),         # odd sizes, k below one batch of slots
    (1, 300, 1000, 4, 2, 64),     # GQA
    (2, 513, 700, 2, 1, 100),     # MQA, k not a multiple of 32
    (1, 1000, 4096, 2, 2, 256),
    (1, 64, 40, 2, 2, 40),        # k == Lk: every key listed
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("b,lq,lk,hq,hk,kk", SHAPES)
def test_sparse_forward_matches_reference(dtype, d, b, lq, lk, hq, hk, kk):
    need(dtype, d)
    torch.manual_seed(lq + lk + d)
    q = torch.randn(b, lq, hq, d, device="cuda", dtype=dtype)
    k, v = (torch.randn(b, lk, hk, d, device="cuda", dtype=dtype) for _ in range(2))
    idx = random_indices(b, lq, hq, lk, kk)
    assert _native.covers("sparse_attention", q, k, v)
    poison_allocator()
    out, lse = attnx.sparse_attention(q, k, v, idx, return_lse=True)
    torch.cuda.synchronize()
    check_forward(out, lse, *reference(q, k, v, idx), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("b,lq,lk,hq,hk,kk", SHAPES)
def test_sparse_backward_matches_reference(dtype, d, b, lq, lk, hq, hk, kk):
    need(dtype, d, backward=True)
    check_backward(dtype, d, b, lq, lk, hq, hk, kk, seed=lq + lk + d + 1)


def check_backward(dtype, d, b, lq, lk, hq, hk, kk, *, seed, order_kind=None):
    """The backward op against the reference on random lists (with the lse gradient on odd Lq);
    order_kind: the query order of the tiled backward (tiled_order), None for the default one."""
    torch.manual_seed(seed)
    q = torch.randn(b, lq, hq, d, device="cuda", dtype=dtype)
    k, v = (torch.randn(b, lk, hk, d, device="cuda", dtype=dtype) for _ in range(2))
    idx = random_indices(b, lq, hq, lk, kk)
    order = None if order_kind is None else tiled_order(idx, lk, order_kind)
    out, lse = torch.ops.attnx.sparse_attention(q, k, v, idx, None)
    dout = torch.randn_like(out)
    dlse = torch.randn_like(lse).masked_fill(torch.isinf(lse), 0) if lq % 2 else None  # the lse gradient too
    poison_allocator()
    grads = torch.ops.attnx.sparse_attention_backward(dout, dlse, q, k, v, out, lse, idx, None, order)
    torch.cuda.synchronize()
    *_, refs = reference(q, k, v, idx, dout, dlse)
    for name, g, r in zip(("dq", "dk", "dv"), grads, refs):
        assert not torch.isnan(g).any(), name
        if r.abs().max().item() < 1e-4:  # nothing listed: exactly zero
            assert g.abs().max().item() == 0, name
        else:
            assert rel_err(g, r) < GRAD_TOL[dtype], name


@pytest.mark.parametrize("d", [64, 128])
def test_sparse_autograd_strided_views(d):
    """q/k/v as views into a packed qkv tensor (head stride 3 * D), the API's autograd path."""
    need(torch.bfloat16, d, backward=True)
    torch.manual_seed(d)
    qkv = torch.randn(2, 700, 3, 4, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q, k, v = qkv.unbind(2)
    idx = random_indices(2, 700, 4, 700, 48)
    out = attnx.sparse_attention(q, k, v, idx)
    dout = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, qkv, dout)
    ro, _, rg = reference(q, k, v, idx, dout)
    assert rel_err(out, ro) < OUT_TOL[torch.bfloat16]
    assert rel_err(g, torch.stack(rg, 2)) < GRAD_TOL[torch.bfloat16]


def test_sparse_edge_sizes():
    need(torch.bfloat16, 64, backward=True)
    for b, lq, lk, kk in [(0, 5, 5, 2), (2, 0, 5, 2), (2, 5, 0, 2), (2, 5, 5, 0)]:
        q = torch.randn(b, lq, 2, 64, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(b, lk, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        idx = torch.full((b, lq, 2, kk), -1, dtype=torch.int32, device="cuda")
        out, lse = torch.ops.attnx.sparse_attention(q, k, v, idx, None)
        assert out.shape == q.shape and (out == 0).all() and torch.isinf(lse).all()
        dq, dk, dv = torch.ops.attnx.sparse_attention_backward(torch.ones_like(out), None, q, k, v, out, lse, idx, None)
        assert dq.shape == q.shape and dk.shape == k.shape
        assert (dq == 0).all() and (dk == 0).all() and (dv == 0).all()


def test_sparse_backward_is_deterministic():
    need(torch.bfloat16, 64, backward=True)
    q, k, v, do = (torch.randn(1, 2048, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    idx = random_indices(1, 2048, 2, 2048, 256, empty_frac=0.0, empty_rows=False)
    out, lse = torch.ops.attnx.sparse_attention(q, k, v, idx, None)
    a = torch.ops.attnx.sparse_attention_backward(do, None, q, k, v, out, lse, idx, None)
    b = torch.ops.attnx.sparse_attention_backward(do, None, q, k, v, out, lse, idx, None)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_sparse_other_head_dims_use_reference():
    need(torch.bfloat16, 64)
    q, k, v = (torch.randn(1, 50, 2, 32, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    idx = random_indices(1, 50, 2, 50, 8)
    assert not _native.covers("sparse_attention", q, k, v)
    out = attnx.sparse_attention(q, k, v, idx)
    assert rel_err(out, reference(q, k, v, idx)[0]) < OUT_TOL[torch.bfloat16]
    with pytest.raises(RuntimeError, match="head dim"):
        torch.ops.attnx.sparse_attention(q, k, v, idx, None)


@pytest.mark.parametrize("what", ["above_range", "below_minus_one", "duplicate_debug", "wrong_dtype", "wrong_shape"])
def test_sparse_bad_indices(what, monkeypatch):
    need(torch.bfloat16, 64)
    q, k, v = (torch.randn(1, 16, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    idx = random_indices(1, 16, 2, 16, 4, empty_frac=0.0, empty_rows=False)
    if what == "above_range":
        idx[0, 3, 1, 2] = 16
    elif what == "below_minus_one":
        idx[0, 5, 0, 0] = -2
    elif what == "duplicate_debug":
        monkeypatch.setenv("ATTNX_DEBUG", "1")
        idx[0, 2, 0, 1] = idx[0, 2, 0, 0]
    elif what == "wrong_dtype":
        idx = idx.long()
    else:
        idx = idx[:, :8]
    with pytest.raises(ValueError) as e:
        attnx.sparse_attention(q, k, v, idx)
    assert names_arg(str(e.value), "indices"), str(e.value)


def test_sparse_out_of_range_indices_stay_in_bounds_in_the_op():
    """The op itself (no Python value check) treats indices outside [0, Lk) as empty slots."""
    need(torch.bfloat16, 64)
    q, k, v = (torch.randn(1, 40, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    idx = random_indices(1, 40, 2, 40, 8, empty_frac=0.0, empty_rows=False)
    bad = idx.clone()
    bad[..., -1] = 1 << 30
    bad[..., -2] = -7
    valid = idx.clone()
    valid[..., -2:] = -1
    out, lse = torch.ops.attnx.sparse_attention(q, k, v, bad, None)
    ref_out, ref_lse = torch.ops.attnx.sparse_attention(q, k, v, valid, None)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


def test_sparse_native_op_passes_opcheck():
    need(torch.bfloat16, 64, backward=True)
    q, k, v = (torch.randn(1, 100, 2, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    idx = random_indices(1, 100, 2, 100, 16)
    torch.library.opcheck(torch.ops.attnx.sparse_attention.default, (q, k, v, idx, None))
    order = torch.rand(1, 2, 100, device="cuda").argsort(dim=-1).int()
    torch.library.opcheck(torch.ops.attnx.sparse_attention.default, (q, k, v, idx, None, order))


def test_sparse_backward_op_rejects_a_mis_shaped_lse():
    """The kernels index lse by query row: a wrong shape is an error, never an out-of-bounds read."""
    need(torch.bfloat16, 64, backward=True)
    q, k, v = (torch.randn(1, 64, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    idx = random_indices(1, 64, 2, 64, 8)
    out, lse = torch.ops.attnx.sparse_attention(q, k, v, idx, None)
    with pytest.raises(RuntimeError, match="'lse'"):
        torch.ops.attnx.sparse_attention_backward(torch.ones_like(out), None, q, k, v, out, lse[:, :32].contiguous(),
                                                  idx, None)


# The tiled forward (query_order given: 128 ordered queries per CTA over the union of their lists,
# tensor cores, bit masks from a pre-pass). Shapes: partial last tiles, unions of one chunk and of
# many (Lk 5000: up to 40 chunks of 128), Lk above 128 * k, a tile with no key at all, GQA.
TILED_SHAPES = SHAPES + [  # b, lq, lk, hq, hk, k
    (1, 700, 5000, 2, 2, 300),
    (2, 257, 3000, 4, 1, 3),
    (1, 129, 200, 2, 2, 200),
]


def tiled_order(idx, lk, kind):
    b, lq, h, _ = idx.shape
    if kind == "similar":
        from attnx.ops.sparse import similar_lists_order
        return similar_lists_order(idx, lk)
    if kind == "identity":
        return torch.arange(lq, dtype=torch.int32, device="cuda").expand(b, h, lq).contiguous()
    return torch.rand(b, h, lq, device="cuda").argsort(dim=-1).int()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("b,lq,lk,hq,hk,kk", TILED_SHAPES)
@pytest.mark.parametrize("kind", ["similar", "random"])
def test_sparse_tiled_forward_matches_reference(dtype, d, b, lq, lk, hq, hk, kk, kind):
    need(dtype, d)
    torch.manual_seed(lq + lk + d + 7)
    q = torch.randn(b, lq, hq, d, device="cuda", dtype=dtype)
    k, v = (torch.randn(b, lk, hk, d, device="cuda", dtype=dtype) for _ in range(2))
    idx = random_indices(b, lq, hq, lk, kk)
    order = tiled_order(idx, lk, kind)
    poison_allocator()
    out, lse = torch.ops.attnx.sparse_attention(q, k, v, idx, None, order)
    torch.cuda.synchronize()
    check_forward(out, lse, *reference(q, k, v, idx), dtype)


def test_sparse_tiled_forward_empty_tiles_and_clustered_lists():
    """Whole tiles without a listed key (out 0, lse -inf) beside tiles whose queries share keys."""
    need(torch.bfloat16, 64)
    torch.manual_seed(3)
    b, lq, lk, h, kk = 1, 640, 2048, 2, 64
    q, k, v = (torch.randn(b, n, h, 64, device="cuda", dtype=torch.bfloat16) for n in (lq, lk, lk))
    base = torch.rand(8, lk, device="cuda").topk(kk, dim=-1).indices.int()  # 8 shared lists
    idx = base[torch.randint(0, 8, (b, lq, h), device="cuda")]
    idx[:, :256] = -1  # the first two tiles of the identity order see nothing
    order = tiled_order(idx, lk, "identity")
    poison_allocator()
    out, lse = torch.ops.attnx.sparse_attention(q, k, v, idx, None, order)
    torch.cuda.synchronize()
    check_forward(out, lse, *reference(q, k, v, idx), torch.bfloat16)
    out2, lse2 = torch.ops.attnx.sparse_attention(q, k, v, idx, None, tiled_order(idx, lk, "similar"))
    check_forward(out2, lse2, *reference(q, k, v, idx), torch.bfloat16)


def test_sparse_tiled_forward_through_the_api(monkeypatch):
    """ATTNX_SPARSE_TILED=1: attnx.sparse_attention orders the queries itself; autograd still runs
    the native backward on the same lists."""
    need(torch.bfloat16, 64, backward=True)
    monkeypatch.setenv("ATTNX_SPARSE_TILED", "1")
    torch.manual_seed(11)
    q, k, v = (torch.randn(1, 500, 2, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    idx = random_indices(1, 500, 2, 500, 40)
    out = attnx.sparse_attention(q, k, v, idx)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ro, _, rg = reference(q, k, v, idx, dout)
    assert rel_err(out, ro) < OUT_TOL[torch.bfloat16]
    for g, r in zip(grads, rg):
        assert rel_err(g, r) < GRAD_TOL[torch.bfloat16]


def test_pq_sparse_attention_tiled_matches_untiled(monkeypatch):
    need(torch.bfloat16, 64)
    torch.manual_seed(5)
    q, k, v = (torch.randn(1, 1024, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    cb = attnx.pq.fit(k, 8, 64, iters=3)
    plain = attnx.pq_sparse_attention(q, k, v, 64, codebook=cb)
    monkeypatch.setenv("ATTNX_SPARSE_TILED", "1")
    tiled = attnx.pq_sparse_attention(q, k, v, 64, codebook=cb)
    assert not torch.isnan(tiled).any()
    assert rel_err(tiled, plain) < OUT_TOL[torch.bfloat16]


def test_sparse_tiled_forward_rejects_a_mis_shaped_order():
    need(torch.bfloat16, 64)
    q, k, v = (torch.randn(1, 64, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    idx = random_indices(1, 64, 2, 64, 8)
    for bad in (torch.zeros(1, 64, 2, dtype=torch.int32, device="cuda"),
                torch.zeros(1, 2, 64, dtype=torch.int64, device="cuda")):
        with pytest.raises(RuntimeError, match="'query_order'"):
            torch.ops.attnx.sparse_attention(q, k, v, idx, None, bad)


def test_list_minhash_kernel_matches_the_reference():
    need(torch.bfloat16, 64)
    from attnx.ops.sparse import _list_minhash
    idx = random_indices(2, 300, 3, 1000, 70)
    idx[0, 4, 1, 5] = 5000  # outside [0, Lk): ignored
    view = torch.cat([idx, idx], dim=-1)[..., ::2]  # a strided last dim is made contiguous by the caller
    for x in (idx, view.contiguous(), idx[:, :, :, :0]):
        assert torch.equal(torch.ops.attnx.sparse_list_minhash(x, 1000), _list_minhash(x, 1000))


# The tiled backward (query_order given, head dim 64): the forward's tiles again, dQ per tile,
# dK/dV added to float32 accumulators at the union keys' rows. Head dim 128 runs the per-row
# backward whatever the order.
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("b,lq,lk,hq,hk,kk", TILED_SHAPES)
@pytest.mark.parametrize("kind", ["similar", "random"])
def test_sparse_tiled_backward_matches_reference(dtype, d, b, lq, lk, hq, hk, kk, kind):
    need(dtype, d, backward=True)
    check_backward(dtype, d, b, lq, lk, hq, hk, kk, seed=lq + lk + d + 13, order_kind=kind)


def test_sparse_tiled_backward_empty_tiles_and_shared_lists():
    need(torch.bfloat16, 64, backward=True)
    torch.manual_seed(4)
    b, lq, lk, h, kk = 1, 640, 2048, 2, 64
    q, k, v = (torch.randn(b, n, h, 64, device="cuda", dtype=torch.bfloat16) for n in (lq, lk, lk))
    base = torch.rand(8, lk, device="cuda").topk(kk, dim=-1).indices.int()
    idx = base[torch.randint(0, 8, (b, lq, h), device="cuda")]
    idx[:, :256] = -1
    out, lse = torch.ops.attnx.sparse_attention(q, k, v, idx, None)
    dout = torch.randn_like(out)
    for kind in ("identity", "similar"):
        grads = torch.ops.attnx.sparse_attention_backward(dout, None, q, k, v, out, lse, idx, None,
                                                          tiled_order(idx, lk, kind))
        *_, refs = reference(q, k, v, idx, dout)
        assert (grads[0][:, :256] == 0).all(), "queries without keys get dQ = 0"
        for name, g, r in zip(("dq", "dk", "dv"), grads, refs):
            assert not torch.isnan(g).any() and rel_err(g, r) < GRAD_TOL[torch.bfloat16], (kind, name)


@pytest.mark.parametrize("b,lq,lk,hq,hk,kk", TILED_SHAPES)
def test_tile_union_prepass_matches_the_reference(b, lq, lk, hq, hk, kk):
    """The tiled kernels' pre-pass alone (unions, their order, the bit masks) against the Python
    reference, on the defined parts of the workspace: a failure here is the pre-pass's, one in the
    tiled forward/backward tests with this passing is the attention kernels'."""
    need(torch.bfloat16, 64)
    from attnx.ops.sparse import _tile_unions_reference, parse_tile_unions
    torch.manual_seed(lq + kk)
    idx = random_indices(b, lq, hq, lk, kk)
    idx[..., -1] = torch.where(idx[..., -1] >= 0, idx[..., -1], lk + 5)  # out-of-range entries are empty
    order = tiled_order(idx, lk, "random")
    got = parse_tile_unions(torch.ops.attnx.sparse_tile_unions(idx, order, lk), idx, lk)
    want = parse_tile_unions(_tile_unions_reference(idx.cpu(), order.cpu(), lk), idx, lk)
    counts, keys, masks = (x.cpu() for x in got)
    assert torch.equal(counts, want[0])
    for t in range(counts.numel()):
        n = counts[t].item()
        assert torch.equal(keys[t, :n], want[1][t, :n]), t
        chunks = -(-n // 128)
        assert torch.equal(masks[t, :chunks], want[2][t, :chunks]), t

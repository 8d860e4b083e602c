"""GPU tests of the native block-sparse forward (the dense FMHA walking listed KV tiles) and
backward (KV-tile-major, walking the transposed lists) against the reference: random block lists
(including Q tiles that visit nothing: out 0, lse -inf), broadcast index tensors, GQA, partial
last tiles, the lse gradient, autograd, malformed lists. Outputs are poisoned (NaN) before each
call.
"""
from __future__ import annotations

import pytest
import torch

import attnx
import attnx.reference
from attnx import _native
from conftest import names_arg, rel_err
from test_gpu_attention import BWD_CTAS, GRAD_TOL, LSE_TOL, OUT_TOL, built, poison_allocator, set_bwd_ctas

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not _native.has_cuda_kernel("block_sparse_attention"),
    reason="needs a CUDA GPU and the native library")

DTYPES = [torch.float16, torch.bfloat16]


def need(dtype, d):
    if torch.cuda.get_device_capability() != (9, 0) or not built(dtype, d):
        pytest.skip("no native forward instance for this dtype / head dim on this GPU")


def random_lists(bi, hi, n_q_tiles, n_kv_tiles, max_count, empty_every=4):
    """Distinct random KV tiles per Q tile; every empty_every-th Q tile visits none."""
    idx = torch.full((bi, hi, n_q_tiles, max_count), -1, dtype=torch.int32)
    cnt = torch.zeros((bi, hi, n_q_tiles), dtype=torch.int32)
    for b in range(bi):
        for h in range(hi):
            for t in range(n_q_tiles):
                c = 0 if t % empty_every == empty_every - 1 else int(torch.randint(1, min(max_count, n_kv_tiles) + 1, ()))
                idx[b, h, t, :c] = torch.randperm(n_kv_tiles)[:c].to(torch.int32)
                cnt[b, h, t] = c
    return idx.cuda(), cnt.cuda()


def run_case(dtype, d, b, lq, lk, h, bcast, grad=False):
    qb, kb = _native.block_sparse_tiles(d)
    nq, nk = -(-lq // qb), -(-lk // kb)
    q = torch.randn(b, lq, h, d, device="cuda", dtype=dtype, requires_grad=grad)
    k = torch.randn(b, lk, h, d, device="cuda", dtype=dtype, requires_grad=grad)
    v = torch.randn(b, lk, h, d, device="cuda", dtype=dtype, requires_grad=grad)
    idx, cnt = random_lists(1 if bcast else b, 1 if bcast else h, nq, nk, max(1, min(nk, 5)))
    assert _native.covers("block_sparse_attention", q, k, v, tiles=(qb, kb))
    poison_allocator()
    out, lse = attnx.block_sparse_attention(q, k, v, idx, cnt, q_block=qb, kv_block=kb, return_lse=True)
    torch.cuda.synchronize()
    ref_out, ref_lse = attnx.reference.block_sparse_attention(q.detach().float(), k.detach().float(),
                                                              v.detach().float(), idx, cnt, q_block=qb,
                                                              kv_block=kb, return_lse=True)
    assert rel_err(out, ref_out) < OUT_TOL[dtype]
    assert not torch.isnan(lse).any()
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "empty rows differ"
    empty = torch.isinf(ref_lse)
    assert (out.float()[empty] == 0).all(), "a Q tile visiting nothing must give zeros"
    fin = ~empty
    if fin.any():
        assert (lse[fin] - ref_lse[fin]).abs().max().item() < LSE_TOL
    return q, k, v, idx, cnt, out, qb, kb


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("b,lq,lk,h,bcast", [(1, 1, 1, 1, True), (2, 1000, 1000, 3, False), (1, 384, 777, 2, True),
                                             (2, 2048, 2048, 4, False), (1, 130, 5000, 1, False)])
def test_block_sparse_forward_matches_reference(dtype, d, b, lq, lk, h, bcast):
    need(dtype, d)
    torch.manual_seed(lq + lk + d)
    run_case(dtype, d, b, lq, lk, h, bcast)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("b,lq,lk,hq,hk,bcast", [(1, 1, 1, 1, 1, True), (2, 1000, 1000, 4, 2, False),
                                                 (1, 384, 777, 2, 2, True), (2, 2048, 1536, 4, 4, False),
                                                 (1, 130, 5000, 2, 1, False), (3, 700, 300, 3, 1, True)])
def test_block_sparse_backward_matches_reference(dtype, d, b, lq, lk, hq, hk, bcast, monkeypatch):
    if not built(dtype, d, "fmha_bwd"):
        pytest.skip("no native backward instance for this dtype / head dim")
    need(dtype, d)
    set_bwd_ctas(monkeypatch, BWD_CTAS[(lq + lk + d + hq) % len(BWD_CTAS)])  # several tiles per CTA
    torch.manual_seed(lq + lk + d + hq)
    qb, kb = _native.block_sparse_tiles(d)
    nq, nk = -(-lq // qb), -(-lk // kb)
    q = torch.randn(b, lq, hq, d, device="cuda", dtype=dtype)
    k, v = (torch.randn(b, lk, hk, d, device="cuda", dtype=dtype) for _ in range(2))
    idx, cnt = random_lists(1 if bcast else b, 1 if bcast else hq, nq, nk, max(1, min(nk, 5)))
    out, lse = torch.ops.attnx.block_sparse_attention(q, k, v, idx, cnt, qb, kb, None)
    dout = torch.randn_like(out)
    dlse = torch.randn_like(lse).masked_fill(torch.isinf(lse), 0) if lq % 2 else None  # the lse gradient too
    poison_allocator()
    grads = torch.ops.attnx.block_sparse_attention_backward(dout, dlse, q, k, v, out, lse, idx, cnt, qb, kb, None)
    torch.cuda.synchronize()
    qf, kf, vf = (x.float().requires_grad_() for x in (q, k, v))
    ro, rl = attnx.reference.block_sparse_attention(qf, kf, vf, idx, cnt, q_block=qb, kv_block=kb, return_lse=True)
    loss = (ro * dout.float()).sum() + ((torch.where(torch.isinf(rl), 0, rl) * dlse).sum() if dlse is not None else 0)
    refs = torch.autograd.grad(loss, (qf, kf, vf), allow_unused=True)
    for name, g, r in zip(("dq", "dk", "dv"), grads, refs):
        r = torch.zeros_like(g, dtype=torch.float32) if r is None else r
        assert not torch.isnan(g).any(), name
        if r.abs().max().item() < 1e-4:  # nothing attends (a single empty tile): exactly zero
            assert g.abs().max().item() < 1e-3, name
        else:
            assert rel_err(g, r) < GRAD_TOL[dtype], name


@pytest.mark.parametrize("d", [64, 128])
def test_block_sparse_autograd_runs_the_native_backward(d):
    need(torch.bfloat16, d)
    if not built(torch.bfloat16, d, "fmha_bwd"):
        pytest.skip("no native backward instance")
    torch.manual_seed(d)
    q, k, v, idx, cnt, out, qb, kb = run_case(torch.bfloat16, d, 1, 500, 600, 2, False, grad=True)
    dout = torch.randn_like(out)
    g = torch.autograd.grad(out, (q, k, v), dout)
    qr, kr, vr = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = attnx.reference.block_sparse_attention(qr, kr, vr, idx, cnt, q_block=qb, kv_block=kb)
    g_ref = torch.autograd.grad(ref, (qr, kr, vr), dout.float())
    for a, r in zip(g, g_ref):
        assert rel_err(a, r) < GRAD_TOL[torch.bfloat16]


def test_block_sparse_backward_is_deterministic_in_dk_dv():
    need(torch.bfloat16, 128)
    if not built(torch.bfloat16, 128, "fmha_bwd"):
        pytest.skip("no native backward instance")
    q, k, v, do = (torch.randn(2, 1024, 2, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    idx, cnt = random_lists(2, 2, 8, 8, 4)
    out, lse = torch.ops.attnx.block_sparse_attention(q, k, v, idx, cnt, 128, 128, None)
    a = torch.ops.attnx.block_sparse_attention_backward(do, None, q, k, v, out, lse, idx, cnt, 128, 128, None)
    b = torch.ops.attnx.block_sparse_attention_backward(do, None, q, k, v, out, lse, idx, cnt, 128, 128, None)
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


def test_block_sparse_backward_op_rejects_other_tiles():
    need(torch.bfloat16, 128)
    q = torch.randn(1, 256, 2, 128, device="cuda", dtype=torch.bfloat16)
    idx, cnt = random_lists(1, 1, 4, 4, 2)
    out = torch.randn_like(q)
    lse = torch.zeros(1, 256, 2, device="cuda")
    with pytest.raises(RuntimeError) as e:
        torch.ops.attnx.block_sparse_attention_backward(out, None, q, q, q, out, lse, idx, cnt, 64, 64, None)
    assert "kv_block" in str(e.value)


def test_block_sparse_other_tiles_use_reference():
    need(torch.bfloat16, 128)
    q, k, v = (torch.randn(1, 200, 2, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    idx, cnt = random_lists(1, 1, 4, 4, 2)
    assert not _native.covers("block_sparse_attention", q, k, v, tiles=(64, 64))
    out = attnx.block_sparse_attention(q, k, v, idx, cnt, q_block=64, kv_block=64)
    ref = attnx.reference.block_sparse_attention(q.float(), k.float(), v.float(), idx, cnt, q_block=64, kv_block=64)
    assert rel_err(out, ref) < OUT_TOL[torch.bfloat16]


@pytest.mark.parametrize("what", ["index_out_of_range", "negative_index", "count_above_capacity", "duplicate",
                                  "wrong_dtype"])
def test_block_sparse_malformed_lists(what):
    need(torch.bfloat16, 128)
    q, k, v = (torch.randn(1, 256, 2, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    idx = torch.tensor([[[[0, 1], [1, 0]]]], dtype=torch.int32, device="cuda")
    cnt = torch.tensor([[[2, 1]]], dtype=torch.int32, device="cuda")
    name = "kv_block_index"
    if what == "index_out_of_range":
        idx[0, 0, 0, 1] = 2
    elif what == "negative_index":
        idx[0, 0, 1, 0] = -1
    elif what == "count_above_capacity":
        cnt[0, 0, 1] = 3
        name = "kv_block_count"
    elif what == "duplicate":
        idx[0, 0, 0, 1] = 0
    else:
        idx = idx.long()
    with pytest.raises(ValueError) as e:
        attnx.block_sparse_attention(q, k, v, idx, cnt, q_block=128, kv_block=128)
    assert names_arg(str(e.value), name), str(e.value)


def test_block_sparse_recheck_after_inplace_change():
    need(torch.bfloat16, 128)
    q, k, v = (torch.randn(1, 256, 2, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    idx = torch.tensor([[[[0, 1], [1, 0]]]], dtype=torch.int32, device="cuda")
    cnt = torch.tensor([[[2, 1]]], dtype=torch.int32, device="cuda")
    attnx.block_sparse_attention(q, k, v, idx, cnt, q_block=128, kv_block=128)
    idx[0, 0, 1, 0] = 7  # in place: the values are checked again
    with pytest.raises(ValueError):
        attnx.block_sparse_attention(q, k, v, idx, cnt, q_block=128, kv_block=128)


def test_block_sparse_native_op_passes_opcheck():
    need(torch.bfloat16, 128)
    q, k, v = (torch.randn(1, 300, 2, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    idx, cnt = random_lists(1, 2, 3, 3, 2)
    torch.library.opcheck(torch.ops.attnx.block_sparse_attention.default, (q, k, v, idx, cnt, 128, 128, None))

"""The torch.ops.attnx registry: reachability, opcheck, info(), backward ops, torch.compile.

Arguments are built from each op's runtime schema (``torch.ops.attnx.<name>.default._schema``):
every argument is looked up by name in a per-op pool of small CPU values written from the public
API; arguments missing from the pool take their schema default.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import attnx
from conftest import assert_close

OP_NAMES = [
    "attention", "attention_backward", "varlen_attention", "varlen_attention_backward", "unpad", "pad",
    "neighborhood_attention", "neighborhood_attention_backward", "block_sparse_attention",
    "block_sparse_attention_backward", "mla_decode_metadata", "mla_decode", "sparse_attention",
    "sparse_attention_backward", "sparse_list_minhash", "sparse_tile_unions", "pq_fit", "pq_encode", "pq_topk",
    "pq_sparse_attention",
]
FORWARD_OF = {n: n[: -len("_backward")] for n in OP_NAMES if n.endswith("_backward")}
DTYPE = torch.float64


def r(*shape, grad=False):
    return torch.randn(*shape, dtype=DTYPE).requires_grad_(grad)


def i32(x):
    return torch.tensor(x, dtype=torch.int32)


def schema(name):
    return getattr(torch.ops.attnx, name).default._schema


def pool(name: str, grad: bool) -> dict:
    """Small valid argument values by schema argument name."""
    if name == "attention":
        return dict(q=r(1, 3, 2, 4, grad=grad), k=r(1, 5, 1, 4, grad=grad), v=r(1, 5, 1, 3, grad=grad),
                    causal=True, scale=None)
    if name == "varlen_attention":
        return dict(q=r(6, 2, 4, grad=grad), k=r(7, 1, 4, grad=grad), v=r(7, 1, 4, grad=grad),
                    cu_seqlens_q=i32([0, 2, 2, 6]), cu_seqlens_k=i32([0, 3, 4, 7]), max_seqlen_q=4, max_seqlen_k=3,
                    causal=True, window_left=2, window_right=-1, window=[2, -1], scale=0.5)
    if name == "unpad":
        mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
        return dict(x=r(3, 3, 2, grad=grad), mask=mask)
    if name == "pad":
        return dict(x_packed=r(4, 2, grad=grad), indices=torch.tensor([0, 2, 3, 5]), batch=2, seqlen=3)
    if name == "neighborhood_attention":
        return dict(q=r(1, 4, 5, 1, 4, grad=grad), k=r(1, 4, 5, 1, 4, grad=grad), v=r(1, 4, 5, 1, 4, grad=grad),
                    kernel_size=[3, 2], dilation=[1, 2], stride=[2, 1], is_causal=[False, True], scale=None)
    if name == "block_sparse_attention":
        idx = i32([[[[0, 2], [1, 0]], [[2, 1], [0, 1]]]])   # [1, H=2, tiles=2, 2]
        cnt = i32([[[2, 1], [1, 0]]])
        return dict(q=r(1, 7, 2, 4, grad=grad), k=r(1, 7, 2, 4, grad=grad), v=r(1, 7, 2, 4, grad=grad),
                    kv_block_index=idx, kv_block_count=cnt, q_block=4, kv_block=3, scale=None)
    if name == "sparse_attention":
        idx = torch.randperm(6)[:3].to(torch.int32).expand(1, 4, 2, 3).contiguous()
        idx[0, 1, 1] = -1
        return dict(q=r(1, 4, 2, 4, grad=grad), k=r(1, 6, 2, 4, grad=grad), v=r(1, 6, 2, 4, grad=grad),
                    indices=idx, scale=None)
    if name == "sparse_tile_unions":
        idx = torch.randperm(6)[:3].to(torch.int32).expand(1, 4, 2, 3).contiguous()
        idx[0, 1, 1] = -1
        return dict(indices=idx, query_order=torch.tensor([[[3, 1, 0, 2], [0, 1, 2, 3]]], dtype=torch.int32),
                    seqlen_k=6)
    if name == "sparse_list_minhash":
        idx = torch.randperm(6)[:3].to(torch.int32).expand(1, 4, 2, 3).contiguous()
        idx[0, 1, 1] = -1
        idx[0, 2, 0, 0] = 9  # outside [0, seqlen_k): an empty slot
        return dict(indices=idx, seqlen_k=6)
    if name in ("mla_decode", "mla_decode_metadata"):
        lens = i32([70, 0, 5])
        meta = attnx.mla_decode_metadata(lens, 4, 1, 2)
        return dict(q=r(3, 2, 4, 72), kv_cache=r(5, 64, 1, 72), block_table=i32([[3, 1], [0, 0], [4, 0]]),
                    cache_seqlens=lens, head_dim_v=64, scale=None, causal=True, metadata=meta,
                    tile_scheduler_metadata=meta.tile_scheduler_metadata, num_splits=meta.num_splits,
                    num_q_heads=4, num_kv_heads=1, q_len=2)
    if name in ("pq_fit", "pq_encode", "pq_topk", "pq_sparse_attention", "pq_update"):
        x = torch.randn(1, 12, 2, 8)
        centroids = torch.randn(2, 2, 4, 4)  # [H, M, C, D // M]
        codes = torch.randint(0, 4, (1, 12, 2, 2), dtype=torch.uint8)
        p = dict(x=x, num_subspaces=2, num_centroids=4, iters=2, seed=0, centroids=centroids, k_codes=codes,
                 q=torch.randn(1, 5, 2, 8), k=3, causal=False)
        if name == "pq_sparse_attention":
            p.update(q=torch.randn(1, 5, 2, 8, requires_grad=grad), k=torch.randn(1, 12, 2, 8, requires_grad=grad),
                     v=torch.randn(1, 12, 2, 8, requires_grad=grad), k_top=3, centroids=centroids, scale=None)
        return p
    raise KeyError(name)


def build_args(name: str, values: dict) -> tuple:
    args = []
    for a in schema(name).arguments:
        if a.name in values:
            args.append(values[a.name])
        elif a.has_default_value():
            args.append(a.default_value)
        else:
            raise AssertionError(f"op {name}: no test value for schema argument {a.name!r} ({schema(name)})")
    return tuple(args)


def op_args(name: str, *, grad: bool = True) -> tuple:
    if name in FORWARD_OF:
        fwd = FORWARD_OF[name]
        vals = pool(fwd, grad=False)
        out, lse = getattr(torch.ops.attnx, fwd)(*build_args(fwd, vals))
        vals.update(out=out, lse=lse, dout=torch.randn_like(out), dlse=torch.randn_like(lse))
        return build_args(name, vals)
    return build_args(name, pool(name, grad=grad))


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", OP_NAMES)
def test_op_reachable(name):
    assert hasattr(torch.ops.attnx, name), f"torch.ops.attnx.{name} is not registered"
    assert isinstance(schema(name), torch._C.FunctionSchema)


@pytest.mark.parametrize("name", OP_NAMES)
def test_opcheck(name):
    args = op_args(name)
    torch.library.opcheck(getattr(torch.ops.attnx, name).default, args)


def test_info():
    info = attnx.info()
    assert isinstance(info, dict)
    ops = info.get("ops", info)
    for name in OP_NAMES:
        assert name in ops, f"attnx.info() does not mention {name}"
        entry = str(ops[name]).lower()
        assert "native" in entry or "reference" in entry, f"info for {name} says neither native nor reference: {entry}"
    if not torch.cuda.is_available():
        for name in OP_NAMES:
            assert "reference" in str(ops[name]).lower()


# ----------------------------------------------------------------------------- backward ops

GRAD_OPS = ["attention", "varlen_attention", "neighborhood_attention", "block_sparse_attention", "sparse_attention"]


@pytest.mark.parametrize("name", GRAD_OPS)
@pytest.mark.parametrize("with_dlse", [False, True])
def test_backward_op_matches_autograd(name, with_dlse):
    """<name>_backward(dout, dlse, q, k, v, out, lse, ...) equals autograd of <name>."""
    vals = pool(name, grad=True)
    op = getattr(torch.ops.attnx, name)
    args = build_args(name, vals)
    out, lse = op(*args)
    dout = torch.randn_like(out)
    dlse = torch.randn_like(lse) if with_dlse else None
    outs, grads = [out], [dout]
    if with_dlse:
        # empty rows (lse = -inf) carry no gradient through lse
        outs.append(torch.where(torch.isinf(lse), torch.zeros_like(lse), lse))
        grads.append(dlse)
    g_auto = torch.autograd.grad(outs, [vals["q"], vals["k"], vals["v"]], grads, allow_unused=True)
    bvals = {**vals, "q": vals["q"].detach(), "k": vals["k"].detach(), "v": vals["v"].detach(),
             "out": out.detach(), "lse": lse.detach(), "dout": dout, "dlse": dlse}
    g_op = getattr(torch.ops.attnx, name + "_backward")(*build_args(name + "_backward", bvals))
    for a, b, n in zip(g_op, g_auto, ("dq", "dk", "dv")):
        b = torch.zeros_like(a) if b is None else b
        assert_close(a, b, 1e-10, n)


@pytest.mark.parametrize("name", GRAD_OPS)
def test_op_gradcheck(name):
    vals = pool(name, grad=True)
    diff = [k for k in ("q", "k", "v")]
    op = getattr(torch.ops.attnx, name)

    def f(q, k, v):
        out, lse = op(*build_args(name, {**vals, "q": q, "k": k, "v": v}))
        return out, torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)

    assert torch.autograd.gradcheck(f, tuple(vals[k] for k in diff))


# ----------------------------------------------------------------------------- torch.compile


class Dense(nn.Module):
    def forward(self, q, k, v):
        out, lse = attnx.attention(q, k, v, causal=True, return_lse=True)
        return out, lse


class Varlen(nn.Module):
    def forward(self, q, k, v, cq, ck):
        return attnx.varlen_attention(q, k, v, cq, ck, 4, 3, causal=True, window=(2, -1), return_lse=True)


class NA(nn.Module):
    def forward(self, q, k, v):
        return attnx.na2d(q, k, v, (3, 2), dilation=(1, 2), stride=(2, 1), is_causal=(False, True), return_lse=True)


class BlockSparse(nn.Module):
    def forward(self, q, k, v, idx, cnt):
        return attnx.block_sparse_attention(q, k, v, idx, cnt, q_block=4, kv_block=3, return_lse=True)


class Sparse(nn.Module):
    def forward(self, q, k, v, idx):
        return attnx.sparse_attention(q, k, v, idx, return_lse=True)


class MLA(nn.Module):
    def forward(self, q, kv, bt, lens):
        return attnx.mla_decode(q, kv, bt, lens, head_dim_v=64, causal=True)


def compile_inputs(family):
    if family == "dense":
        p = pool("attention", grad=True)
        return Dense(), (p["q"], p["k"], p["v"]), 3
    if family == "varlen":
        p = pool("varlen_attention", grad=True)
        return Varlen(), (p["q"], p["k"], p["v"], p["cu_seqlens_q"], p["cu_seqlens_k"]), 3
    if family == "na":
        p = pool("neighborhood_attention", grad=True)
        return NA(), (p["q"], p["k"], p["v"]), 3
    if family == "block_sparse":
        p = pool("block_sparse_attention", grad=True)
        return BlockSparse(), (p["q"], p["k"], p["v"], p["kv_block_index"], p["kv_block_count"]), 3
    if family == "sparse":
        p = pool("sparse_attention", grad=True)
        return Sparse(), (p["q"], p["k"], p["v"], p["indices"]), 3
    if family == "mla":
        p = pool("mla_decode", grad=False)
        return MLA(), (p["q"], p["kv_cache"], p["block_table"], p["cache_seqlens"]), 0
    raise KeyError(family)


@pytest.mark.parametrize("family", ["dense", "varlen", "na", "block_sparse", "sparse", "mla"])
def test_compile_matches_eager(family):
    torch._dynamo.reset()
    mod, inputs, n_diff = compile_inputs(family)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager", dynamic=False)
    out_e, lse_e = mod(*inputs)
    out_c, lse_c = compiled(*inputs)
    assert_close(out_c, out_e, 1e-12, "out")
    assert_close(lse_c, lse_e, 1e-12, "lse")
    if n_diff:
        diff = inputs[:n_diff]
        go = torch.randn_like(out_e)
        g_e = torch.autograd.grad(out_e, diff, go)
        g_c = torch.autograd.grad(out_c, diff, go)
        for a, b in zip(g_c, g_e):
            assert_close(a, b, 1e-12, "grad")

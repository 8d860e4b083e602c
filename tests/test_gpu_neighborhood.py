"""GPU tests of the fused neighborhood-attention forward and backward against the reference:
random 1-D/2-D/3-D configurations (odd and even kernels, strides, causal on some axes only,
kernel equal to the axis, extents that are not multiples of a tile, several batches, GQA, the
lse gradient), the layouts read in place or copied, dilation (groups in the batch, with remainders), autograd, opcheck and
bad input. Outputs are poisoned (NaN) before each call.
"""
from __future__ import annotations

import random

import pytest
import torch

import attnx
import attnx.reference
from attnx import _native
from attnx.ops.neighborhood import dilation_in_batch
from conftest import names_arg, rel_err
from test_gpu_attention import BWD_CTAS, GRAD_TOL, LSE_TOL, OUT_TOL, built, poison_allocator, set_bwd_ctas

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not _native.has_cuda_kernel("neighborhood_attention"),
    reason="needs a CUDA GPU and the native library")

DTYPES = [torch.float16, torch.bfloat16]


def need(dtype, d, backward=False):
    families = ("na_fwd", "na_bwd") if backward else ("na_fwd",)
    if torch.cuda.get_device_capability() != (9, 0) or not all(built(dtype, d, f) for f in families):
        pytest.skip("no native NA instance for this dtype / head dim on this GPU")


def check(q, k, v, kernel, dtype, **kw):
    """Native forward (NaN-poisoned outputs) against the float32 reference."""
    assert _native.covers("neighborhood_attention", q, k, v, dilation=(1,) * (q.dim() - 3)) or kw.get("dilation")
    poison_allocator()
    out, lse = attnx.neighborhood_attention(q, k, v, kernel, return_lse=True, **kw)
    torch.cuda.synchronize()
    ref_out, ref_lse = attnx.reference.neighborhood_attention(q.float(), k.float(), v.float(), kernel,
                                                              return_lse=True, **kw)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert rel_err(out, ref_out) < OUT_TOL[dtype]
    assert (lse - ref_lse).abs().max().item() < LSE_TOL
    return out


def check_backward(q, k, v, kernel, dtype, stride, causal, with_dlse):
    """Native backward op (NaN-poisoned gradients) against autograd through the float32 reference."""
    rank = q.dim() - 3
    args = (list(kernel), [1] * rank, list(stride), list(causal), None)
    out, lse = torch.ops.attnx.neighborhood_attention(q, k, v, *args)
    dout = torch.randn_like(out)
    dlse = torch.randn_like(lse) if with_dlse else None
    poison_allocator()
    grads = torch.ops.attnx.neighborhood_attention_backward(dout, dlse, q, k, v, out, lse, *args)
    torch.cuda.synchronize()
    qf, kf, vf = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref_out, ref_lse = attnx.reference.neighborhood_attention(qf, kf, vf, kernel, stride=stride, is_causal=causal,
                                                              return_lse=True)
    loss = (ref_out * dout.float()).sum() + ((ref_lse * dlse).sum() if with_dlse else 0.0)
    refs = torch.autograd.grad(loss, (qf, kf, vf))
    for name, g, r in zip(("dq", "dk", "dv"), grads, refs):
        assert g.shape == r.shape and g.dtype == dtype, name
        assert not torch.isnan(g).any(), name
        if r.abs().max().item() < 1e-4:  # identically zero (dq when every query sees one key): rounding only
            assert g.abs().max().item() < 1e-3, name
        else:
            assert rel_err(g, r) < GRAD_TOL[dtype], name


def random_config(seed):
    """A random NA problem: rank 1-3, extents from 1 to a few tiles, kernel up to the axis,
    stride up to the kernel (sometimes), causal per axis (sometimes)."""
    rng = random.Random(seed)
    rank = rng.choice([1, 2, 3])
    top = {1: 700, 2: 40, 3: 14}[rank]
    spatial = tuple(rng.randint(1, top) for _ in range(rank))
    kernel = tuple(rng.randint(1, n) for n in spatial)
    stride = tuple(rng.randint(1, k) if rng.random() < 0.3 else 1 for k in kernel)
    causal = tuple(rng.random() < 0.25 for _ in range(rank))
    b = rng.choice([1, 1, 2, 3])
    hk = rng.choice([1, 2])
    hq = hk * rng.choice([1, 2])
    return spatial, kernel, stride, causal, b, hq, hk


@pytest.mark.parametrize("seed", range(24))
@pytest.mark.parametrize("d", [32, 64, 128])
def test_na_forward_random_configs(seed, d, monkeypatch):
    dtype = DTYPES[seed % 2]
    need(dtype, d)
    if seed % 3 != 0:  # one in three picks its tiles; the others force 64- and 128-token tiles
        monkeypatch.setenv("ATTNX_NA_TILE", "64" if seed % 3 == 1 else "128")
    spatial, kernel, stride, causal, b, hq, hk = random_config(seed * 7 + d)
    torch.manual_seed(seed)
    q = torch.randn(b, *spatial, hq, d, device="cuda", dtype=dtype)
    k = torch.randn(b, *spatial, hk, d, device="cuda", dtype=dtype)
    v = torch.randn(b, *spatial, hk, d, device="cuda", dtype=dtype)
    check(q, k, v, kernel, dtype, stride=stride, is_causal=causal)


@pytest.mark.parametrize("seed", range(24))
@pytest.mark.parametrize("d", [32, 64, 128])
def test_na_backward_random_configs(seed, d, monkeypatch):
    set_bwd_ctas(monkeypatch, BWD_CTAS[seed % len(BWD_CTAS)])  # several KV tiles per CTA
    dtype = DTYPES[(seed + 1) % 2]
    need(dtype, d, backward=True)
    spatial, kernel, stride, causal, b, hq, hk = random_config(seed * 11 + d + 1)
    torch.manual_seed(seed)
    q = torch.randn(b, *spatial, hq, d, device="cuda", dtype=dtype)
    k = torch.randn(b, *spatial, hk, d, device="cuda", dtype=dtype)
    v = torch.randn(b, *spatial, hk, d, device="cuda", dtype=dtype)
    check_backward(q, k, v, kernel, dtype, stride, causal, with_dlse=seed % 3 == 0)


EDGE_CONFIGS = [
    ((1,), (1,), (1,), (False,)),                          # a single token
    ((4096,), (257,), (1,), (False,)),                     # 1-D, many tiles
    ((1000,), (64,), (1,), (True,)),                       # even kernel, causal, partial last tile
    ((33, 47), (33, 8), (1, 1), (False, False)),           # kernel equal to an axis, even kernel
    ((64, 64), (15, 15), (1, 1), (True, False)),           # causal on one axis only
    ((48, 40), (16, 16), (16, 8), (False, False)),         # strided windows
    ((12, 20, 24), (5, 7, 6), (1, 1, 1), (False, True, False)),
    ((16, 32, 32), (8, 16, 16), (8, 16, 16), (False,) * 3),  # blocked attention: no element mask
    ((9, 17, 33), (3, 4, 9), (2, 3, 5), (True, True, True)),
]


@pytest.mark.parametrize("tile", ["auto", "64", "128"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spatial,kernel,stride,causal", EDGE_CONFIGS)
def test_na_forward_edge_configs(dtype, spatial, kernel, stride, causal, tile, monkeypatch):
    """Both forward tile sizes (64 and 128 tokens; ATTNX_NA_TILE forces one) on every edge case."""
    need(dtype, 128)
    if tile != "auto":
        monkeypatch.setenv("ATTNX_NA_TILE", tile)
    torch.manual_seed(len(spatial))
    q, k, v = (torch.randn(2, *spatial, 2, 128, device="cuda", dtype=dtype) for _ in range(3))
    check(q, k, v, kernel, dtype, stride=stride, is_causal=causal)


@pytest.mark.parametrize("ctas", BWD_CTAS, ids=lambda c: f"ctas={c or 'sms'}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spatial,kernel,stride,causal", EDGE_CONFIGS)
def test_na_backward_edge_configs(dtype, spatial, kernel, stride, causal, ctas, monkeypatch):
    """Every edge case with the persistent backward's grid capped (one CTA walking every KV tile,
    three sharing them) and uncapped."""
    need(dtype, 128, backward=True)
    set_bwd_ctas(monkeypatch, ctas)
    torch.manual_seed(len(spatial) + 1)
    q, k, v = (torch.randn(2, *spatial, 2, 128, device="cuda", dtype=dtype) for _ in range(3))
    check_backward(q, k, v, kernel, dtype, stride, causal, with_dlse=len(spatial) == 2)


def test_na_reads_qkv_slices_in_place_and_copies_other_layouts():
    need(torch.bfloat16, 64)
    qkv = torch.randn(2, 20, 28, 3, 4, 64, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.unbind(3)  # batch stride = extent x axis stride: read in place
    check(q, k, v, (7, 9), torch.bfloat16)
    # spatial axes swapped: the batch stride no longer chains with axis 0, so the API copies
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    check(qt, kt, vt, (9, 7), torch.bfloat16)


@pytest.mark.parametrize("dtype,d,spatial,kernel,dil,stride,causal", [
    (torch.bfloat16, 128, (24, 30), (5, 7), (2, 1), (1, 1), (False, False)),
    (torch.float16, 64, (4096,), (65,), (4,), (1,), (True,)),
    (torch.bfloat16, 32, (12, 16, 18), (3, 4, 5), (2, 4, 3), (1, 2, 1), (False, True, False)),
    (torch.float16, 128, (56, 56), (7, 7), (8, 8), (1, 1), (False, False)),  # DiNAT-style
    # axes that are not multiples of their dilation: groups of two lengths, one call per combination
    (torch.bfloat16, 128, (25, 30), (5, 7), (2, 1), (1, 1), (False, False)),
    (torch.float16, 64, (1001,), (33,), (7,), (1,), (True,)),
    (torch.bfloat16, 64, (13, 17, 19), (3, 4, 5), (2, 4, 3), (1, 2, 1), (False, True, False)),
    (torch.bfloat16, 32, (28, 28), (7, 7), (3, 3), (2, 1), (False, False)),
])
def test_na_dilation_runs_native_with_groups_in_the_batch(dtype, d, spatial, kernel, dil, stride, causal):
    need(dtype, d, backward=True)
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, *spatial, 2, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    assert dilation_in_batch(q, k, v, dil)
    kw = dict(dilation=dil, stride=stride, is_causal=causal)
    out, lse = attnx.neighborhood_attention(q, k, v, kernel, return_lse=True, **kw)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    qf, kf, vf = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref_out, ref_lse = attnx.reference.neighborhood_attention(qf, kf, vf, kernel, return_lse=True, **kw)
    ref_grads = torch.autograd.grad(ref_out, (qf, kf, vf), dout.float())
    assert rel_err(out, ref_out) < OUT_TOL[dtype]
    assert (lse - ref_lse).abs().max().item() < LSE_TOL
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert not torch.isnan(g).any(), name
        assert rel_err(g, r) < GRAD_TOL[dtype], name


@pytest.mark.parametrize("layout", ["contiguous", "qkv_slices", "strided_dout"])
def test_na_autograd_runs_the_native_backward(layout):
    need(torch.bfloat16, 64, backward=True)
    torch.manual_seed(0)
    if layout == "qkv_slices":  # gradients flow back into one qkv tensor
        qkv = torch.randn(2, 16, 24, 3, 2, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        q, k, v = qkv.unbind(3)
        leaves = (qkv,)
    else:
        q, k, v = (torch.randn(2, 16, 24, 2, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        leaves = (q, k, v)
    assert _native.covers("neighborhood_attention", q, k, v, dilation=(1, 1))
    out = attnx.neighborhood_attention(q, k, v, (5, 7), is_causal=(False, True))
    dout = torch.randn(2, 24, 16, 2, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2) \
        if layout == "strided_dout" else torch.randn_like(out)  # batch stride no longer chains: copied
    grads = torch.autograd.grad(out, leaves, dout)
    lf = [x.detach().float().requires_grad_() for x in leaves]
    qf, kf, vf = lf[0].unbind(3) if layout == "qkv_slices" else lf
    ref = attnx.reference.neighborhood_attention(qf, kf, vf, (5, 7), is_causal=(False, True))
    ref_grads = torch.autograd.grad(ref, lf, dout.float())
    for g, r in zip(grads, ref_grads):
        assert not torch.isnan(g).any()
        assert rel_err(g, r) < GRAD_TOL[torch.bfloat16]


def test_na_empty_batch():
    need(torch.bfloat16, 128)
    q = torch.randn(0, 8, 8, 2, 128, device="cuda", dtype=torch.bfloat16)
    out = attnx.neighborhood_attention(q, q, q, 3)
    assert out.shape == q.shape


def test_na_native_op_passes_opcheck():
    need(torch.bfloat16, 64)
    q, k, v = (torch.randn(2, 10, 12, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    torch.library.opcheck(torch.ops.attnx.neighborhood_attention.default,
                          (q, k, v, [3, 5], [1, 1], [1, 2], [False, True], None))


def test_na_native_backward_op_passes_opcheck():
    need(torch.bfloat16, 64, backward=True)
    q, k, v = (torch.randn(2, 10, 12, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    args = ([3, 5], [1, 1], [1, 2], [False, True], None)
    out, lse = torch.ops.attnx.neighborhood_attention(q, k, v, *args)
    torch.library.opcheck(torch.ops.attnx.neighborhood_attention_backward.default,
                          (torch.randn_like(out), torch.randn_like(lse), q, k, v, out, lse, *args))


def test_na_native_backward_op_rejects_bad_input():
    need(torch.bfloat16, 64, backward=True)
    q = torch.randn(1, 16, 16, 2, 64, device="cuda", dtype=torch.bfloat16)
    op = torch.ops.attnx.neighborhood_attention_backward.default
    args = ([3, 3], [1, 1], [1, 1], [False, False], None)
    out, lse = torch.ops.attnx.neighborhood_attention(q, q, q, *args)
    with pytest.raises(RuntimeError) as e:
        op(out[:, :8], None, q, q, q, out, lse, *args)
    assert names_arg(str(e.value), "dout")
    with pytest.raises(RuntimeError) as e:
        op(out, None, q, q, q, out, lse[..., :1], *args)
    assert names_arg(str(e.value), "lse")
    with pytest.raises(RuntimeError) as e:
        op(out, lse.double(), q, q, q, out, lse, *args)
    assert names_arg(str(e.value), "dlse")
    with pytest.raises(RuntimeError) as e:
        op(out, None, q, q, q, out, lse, [3, 3], [1, 2], [1, 1], [False, False], None)
    assert names_arg(str(e.value), "dilation")


def test_na_native_op_rejects_what_it_cannot_run():
    need(torch.bfloat16, 64)
    q = torch.randn(1, 16, 16, 2, 64, device="cuda", dtype=torch.bfloat16)
    op = torch.ops.attnx.neighborhood_attention.default
    with pytest.raises(RuntimeError) as e:
        op(q, q, q, [3, 3], [2, 1], [1, 1], [False, False], None)
    assert names_arg(str(e.value), "dilation")
    with pytest.raises(RuntimeError) as e:
        op(q, q, q, [3], [1], [1], [False], None)
    assert names_arg(str(e.value), "kernel_size")
    with pytest.raises(RuntimeError) as e:
        op(q, q, q, [17, 3], [1, 1], [1, 1], [False, False], None)
    assert names_arg(str(e.value), "kernel_size")
    with pytest.raises(RuntimeError) as e:
        op(q, q, q, [3, 3], [1, 1], [4, 1], [False, False], None)
    assert names_arg(str(e.value), "stride")

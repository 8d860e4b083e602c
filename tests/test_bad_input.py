"""Malformed arguments raise ValueError (or RuntimeError from a kernel) naming the argument.

DESIGN.md, "Bad input": every public entry point validates rank, shapes that must agree, dtype,
device, contiguity, kernel_size <= axis extent (times dilation), int32 and non-decreasing
cu_seqlens, cache_seqlens within the block table's capacity; it never reads out of bounds and
never returns silent garbage.
"""
from __future__ import annotations

import pytest
import torch

import attnx
import attnx.reference
from conftest import names_arg, requires_cuda

IMPLS = ["reference", "api"]


def impl(which: str, name: str):
    return getattr(attnx.reference if which == "reference" else attnx, name)


def r(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def i32(x):
    return torch.tensor(x, dtype=torch.int32)


def noncontig_last(*shape):
    """A tensor of `shape` whose last dim has stride 2."""
    return torch.randn(*shape[:-1], shape[-1] * 2)[..., ::2]


def expect_error(fn, *names):
    with pytest.raises((ValueError, RuntimeError)) as ei:
        fn()
    msg = str(ei.value)
    assert names_arg(msg, *names), f"the message does not name {' or '.join(map(repr, names))}: {msg!r}"


# ----------------------------------------------------------------------------- dense attention

Q, K, V = (1, 3, 2, 4), (1, 5, 2, 4), (1, 5, 2, 4)

ATTENTION_CASES = {
    "q-rank3": (lambda: (r(3, 2, 4), r(*K), r(*K)), ("q",)),           # only q is wrong
    "qkv-rank3": (lambda: (r(3, 2, 4), r(5, 2, 4), r(5, 2, 4)), ("q",)),
    "k-rank3": (lambda: (r(*Q), r(5, 2, 4), r(*K)), ("k",)),
    "v-rank5": (lambda: (r(*Q), r(*K), r(1, 5, 2, 4, 1)), ("v",)),
    "batch-mismatch": (lambda: (r(*Q), r(2, 5, 2, 4), r(2, 5, 2, 4)), ("k", "q")),
    "heads-not-divisible": (lambda: (r(1, 3, 3, 4), r(1, 5, 2, 4), r(1, 5, 2, 4)), ("k", "q")),
    "head-dim-mismatch": (lambda: (r(*Q), r(1, 5, 2, 8), r(1, 5, 2, 8)), ("k", "q")),
    "v-length-mismatch": (lambda: (r(*Q), r(*K), r(1, 6, 2, 4)), ("v",)),
    "v-heads-mismatch": (lambda: (r(*Q), r(*K), r(1, 5, 1, 4)), ("v",)),
    "dtype-mismatch-k": (lambda: (r(*Q), r(*K, dtype=torch.float64), r(*K)), ("k",)),
    "dtype-mismatch-v": (lambda: (r(*Q), r(*K), r(*K, dtype=torch.bfloat16)), ("v",)),
    "int-dtype": (lambda: (torch.ones(*Q, dtype=torch.int32), torch.ones(*K, dtype=torch.int32),
                           torch.ones(*K, dtype=torch.int32)), ("q",)),
    "noncontig-q": (lambda: (noncontig_last(*Q), r(*K), r(*K)), ("q",)),
    "noncontig-k": (lambda: (r(*Q), noncontig_last(*K), r(*K)), ("k",)),
    "noncontig-v": (lambda: (r(*Q), r(*K), noncontig_last(*K)), ("v",)),
}


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("case", list(ATTENTION_CASES), ids=str)
def test_attention_bad(which, case):
    make, names = ATTENTION_CASES[case]
    expect_error(lambda: impl(which, "attention")(*make(), causal=True), *names)


@requires_cuda
@pytest.mark.parametrize("which", IMPLS)
def test_attention_device_mismatch(which):
    expect_error(lambda: impl(which, "attention")(r(*Q).cuda(), r(*K), r(*K)), "k")


# ----------------------------------------------------------------------------- varlen

T = 7  # packed tokens: sequences [3, 4]


def varlen_args(**over):
    a = dict(q=r(T, 2, 4), k=r(T, 1, 4), v=r(T, 1, 4), cu_seqlens_q=i32([0, 3, 7]), cu_seqlens_k=i32([0, 3, 7]),
             max_seqlen_q=4, max_seqlen_k=4)
    a.update(over)
    return a


VARLEN_CASES = {
    "q-rank4": (dict(q=r(1, T, 2, 4)), ("q",)),
    "heads-not-divisible": (dict(q=r(T, 3, 4), k=r(T, 2, 4), v=r(T, 2, 4)), ("k", "q")),
    "dtype-mismatch": (dict(k=r(T, 1, 4, dtype=torch.float64)), ("k",)),
    "noncontig-q": (dict(q=noncontig_last(T, 2, 4)), ("q",)),
    "cu_q-int64": (dict(cu_seqlens_q=torch.tensor([0, 3, 7])), ("cu_seqlens_q",)),
    "cu_k-float": (dict(cu_seqlens_k=torch.tensor([0.0, 3.0, 7.0])), ("cu_seqlens_k",)),
    "cu_q-2d": (dict(cu_seqlens_q=i32([[0, 3, 7]])), ("cu_seqlens_q",)),
    "cu_q-decreasing": (dict(cu_seqlens_q=i32([0, 5, 3, 7]), cu_seqlens_k=i32([0, 3, 3, 7])), ("cu_seqlens_q",)),
    "cu_k-decreasing": (dict(cu_seqlens_k=i32([0, 5, 3, 7]), cu_seqlens_q=i32([0, 3, 3, 7])), ("cu_seqlens_k",)),
    "cu-wrong-length": (dict(cu_seqlens_k=i32([0, 2, 3, 7])), ("cu_seqlens_k", "cu_seqlens_q")),
    "cu_q-wrong-total": (dict(cu_seqlens_q=i32([0, 3, 6])), ("cu_seqlens_q",)),
    "cu_k-wrong-total": (dict(cu_seqlens_k=i32([0, 3, 9])), ("cu_seqlens_k",)),
    "cu_q-nonzero-start": (dict(cu_seqlens_q=i32([1, 3, 7])), ("cu_seqlens_q",)),
    "cu_q-empty": (dict(cu_seqlens_q=i32([]), cu_seqlens_k=i32([])), ("cu_seqlens_q",)),
    "max_seqlen_q-too-small": (dict(max_seqlen_q=3), ("max_seqlen_q",)),
    "max_seqlen_k-too-small": (dict(max_seqlen_k=2), ("max_seqlen_k",)),
    "max_seqlen-negative": (dict(max_seqlen_q=-1), ("max_seqlen_q",)),
}


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("case", list(VARLEN_CASES), ids=str)
def test_varlen_bad(which, case):
    over, names = VARLEN_CASES[case]
    a = varlen_args(**over)
    f = impl(which, "varlen_attention")
    expect_error(lambda: f(a["q"], a["k"], a["v"], a["cu_seqlens_q"], a["cu_seqlens_k"], a["max_seqlen_q"],
                           a["max_seqlen_k"], causal=True), *names)


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("window", [(-2, 0), (1, 2, 3), (1.5, 0)], ids=str)
def test_varlen_bad_window(which, window):
    a = varlen_args()
    f = impl(which, "varlen_attention")
    expect_error(lambda: f(a["q"], a["k"], a["v"], a["cu_seqlens_q"], a["cu_seqlens_k"], 4, 4, window=window), "window")


@requires_cuda
@pytest.mark.parametrize("which", IMPLS)
def test_varlen_cu_seqlens_device_mismatch(which):
    a = varlen_args()
    f = impl(which, "varlen_attention")
    expect_error(lambda: f(a["q"].cuda(), a["k"].cuda(), a["v"].cuda(), a["cu_seqlens_q"], a["cu_seqlens_k"].cuda(),
                           4, 4), "cu_seqlens_q")


# ----------------------------------------------------------------------------- unpad / pad


@pytest.mark.parametrize("which", IMPLS)
def test_unpad_bad(which):
    f = impl(which, "unpad")
    expect_error(lambda: f(r(2, 3, 4), torch.ones(2, 3, dtype=torch.int32)), "mask")
    expect_error(lambda: f(r(2, 3, 4), torch.ones(2, 4, dtype=torch.bool)), "mask")
    expect_error(lambda: f(r(2, 3, 4), torch.ones(6, dtype=torch.bool)), "mask")
    expect_error(lambda: f(r(6), torch.ones(2, 3, dtype=torch.bool)), "x", "mask")


@pytest.mark.parametrize("which", IMPLS)
def test_pad_bad(which):
    f = impl(which, "pad")
    xp = r(4, 2)
    expect_error(lambda: f(xp, torch.tensor([0, 1, 2]), 2, 3), "indices")              # wrong length
    expect_error(lambda: f(xp, torch.tensor([[0, 1, 2, 3]]), 2, 3), "indices")         # wrong rank
    expect_error(lambda: f(xp, torch.tensor([0.0, 1, 2, 3]), 2, 3), "indices")         # wrong dtype
    expect_error(lambda: f(xp, torch.tensor([0, 1, 2, 6]), 2, 3), "indices")           # out of range
    expect_error(lambda: f(xp, torch.tensor([0, 1, 2, -1]), 2, 3), "indices")          # negative
    expect_error(lambda: f(xp, torch.tensor([0, 1, 2, 3]), -1, 3), "batch")


# ----------------------------------------------------------------------------- neighborhood


def na_call(which, spatial=(6, 5), kernel_size=3, *, H=2, Hk=None, fn="neighborhood_attention", q=None, k=None,
            v=None, **kw):
    Hk = H if Hk is None else Hk
    q = r(1, *spatial, H, 4) if q is None else q
    k = r(1, *spatial, Hk, 4) if k is None else k
    v = r(1, *spatial, Hk, 4) if v is None else v
    return impl(which, fn)(q, k, v, kernel_size, **kw)


NA_CASES = {
    "kernel-gt-axis": (dict(spatial=(4,), kernel_size=5), ("kernel_size",)),
    "kernel-gt-axis-2d": (dict(spatial=(6, 3), kernel_size=(3, 4)), ("kernel_size",)),
    "kernel-times-dilation-gt-axis": (dict(spatial=(5,), kernel_size=3, dilation=2), ("kernel_size", "dilation")),
    "kernel-times-dilation-gt-axis-3d": (dict(spatial=(4, 4, 7), kernel_size=2, dilation=(2, 2, 4)),
                                         ("kernel_size", "dilation")),
    "kernel-zero": (dict(kernel_size=0), ("kernel_size",)),
    "kernel-wrong-len": (dict(kernel_size=(3, 3, 3)), ("kernel_size",)),
    "kernel-float": (dict(kernel_size=3.0), ("kernel_size",)),
    "dilation-zero": (dict(dilation=0), ("dilation",)),
    "dilation-wrong-len": (dict(dilation=(1,)), ("dilation",)),
    "stride-zero": (dict(stride=0), ("stride",)),
    "stride-gt-kernel": (dict(stride=4), ("stride",)),
    "is_causal-wrong-len": (dict(is_causal=(True,)), ("is_causal",)),
    "heads-not-divisible": (dict(H=3, Hk=2), ("k", "q")),
    "qkv-rank3": (dict(q=r(1, 2, 4), k=r(1, 2, 4), v=r(1, 2, 4)), ("q",)),
    "q-rank7": (dict(q=r(1, 2, 2, 2, 2, 2, 4), k=r(1, 2, 2, 2, 2, 2, 4), v=r(1, 2, 2, 2, 2, 2, 4), kernel_size=1), ("q",)),
    "k-spatial-mismatch": (dict(k=r(1, 6, 4, 2, 4), v=r(1, 6, 4, 2, 4)), ("k",)),
    "dtype-mismatch": (dict(v=r(1, 6, 5, 2, 4, dtype=torch.float64)), ("v",)),
    "noncontig-k": (dict(k=noncontig_last(1, 6, 5, 2, 4)), ("k",)),
    "na1d-with-2d": (dict(fn="na1d"), ("q",)),
    "na3d-with-2d": (dict(fn="na3d"), ("q",)),
}


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("case", list(NA_CASES), ids=str)
def test_na_bad(which, case):
    kw, names = NA_CASES[case]
    expect_error(lambda: na_call(which, **kw), *names)


# ----------------------------------------------------------------------------- block sparse


def bs_call(which, *, L=8, H=2, q_block=4, kv_block=4, index=None, count=None, q=None):
    q = r(1, L, H, 4) if q is None else q
    k, v = r(1, L, H, 4), r(1, L, H, 4)
    nq = -(-L // q_block) if q_block > 0 else 2
    index = torch.zeros(1, H, nq, 1, dtype=torch.int32) if index is None else index
    count = torch.ones(1, H, nq, dtype=torch.int32) if count is None else count
    return impl(which, "block_sparse_attention")(q, k, v, index, count, q_block=q_block, kv_block=kv_block)


BS_CASES = {
    "q_block-zero": (dict(q_block=0), ("q_block",)),
    "q_block-negative": (dict(q_block=-4), ("q_block",)),
    "kv_block-zero": (dict(kv_block=0), ("kv_block",)),
    "index-float": (dict(index=torch.zeros(1, 2, 2, 1)), ("kv_block_index",)),
    "index-int16": (dict(index=torch.zeros(1, 2, 2, 1, dtype=torch.int16)), ("kv_block_index",)),
    "count-float": (dict(count=torch.ones(1, 2, 2)), ("kv_block_count",)),
    # the contract (docs/design-decisions.md) says int32, as for cu_seqlens (where int64 is rejected)
    "index-int64": (dict(index=torch.zeros(1, 2, 2, 1, dtype=torch.int64)), ("kv_block_index",)),
    "count-int64": (dict(count=torch.ones(1, 2, 2, dtype=torch.int64)), ("kv_block_count",)),
    "index-rank3": (dict(index=torch.zeros(2, 2, 1, dtype=torch.int32)), ("kv_block_index",)),
    "index-wrong-num-tiles": (dict(index=torch.zeros(1, 2, 3, 1, dtype=torch.int32),
                                   count=torch.ones(1, 2, 3, dtype=torch.int32)), ("kv_block_index",)),
    "index-wrong-heads": (dict(index=torch.zeros(1, 3, 2, 1, dtype=torch.int32),
                               count=torch.ones(1, 3, 2, dtype=torch.int32)), ("kv_block_index",)),
    "count-shape-mismatch": (dict(count=torch.ones(1, 2, 3, dtype=torch.int32)), ("kv_block_count",)),
    "count-gt-max_count": (dict(count=torch.full((1, 2, 2), 2, dtype=torch.int32)), ("kv_block_count",)),
    "count-negative": (dict(count=torch.full((1, 2, 2), -1, dtype=torch.int32)), ("kv_block_count",)),
    "tile-out-of-range": (dict(index=torch.full((1, 2, 2, 1), 2, dtype=torch.int32)), ("kv_block_index",)),
    "tile-negative": (dict(index=torch.full((1, 2, 2, 1), -1, dtype=torch.int32)), ("kv_block_index",)),
    "q-rank3": (dict(q=r(8, 2, 4)), ("q",)),
}


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("case", list(BS_CASES), ids=str)
def test_block_sparse_bad(which, case):
    kw, names = BS_CASES[case]
    expect_error(lambda: bs_call(which, **kw), *names)


def test_block_sparse_duplicate_tiles_rejected_by_reference():
    """docs/design-decisions.md: listed tiles must be distinct (the reference checks)."""
    expect_error(lambda: bs_call("reference", index=torch.zeros(1, 2, 2, 2, dtype=torch.int32),
                                 count=torch.full((1, 2, 2), 2, dtype=torch.int32)), "kv_block_index")


# ----------------------------------------------------------------------------- MLA


def mla_args(**over):
    a = dict(q=r(2, 1, 4, 72), kv_cache=r(4, 64, 1, 72), block_table=i32([[0, 1], [2, 3]]),
             cache_seqlens=i32([100, 64]), head_dim_v=64)
    a.update(over)
    return a


MLA_CASES = {
    "cache_seqlens-beyond-capacity": (dict(cache_seqlens=i32([129, 64])), ("cache_seqlens",)),
    "cache_seqlens-negative": (dict(cache_seqlens=i32([-1, 64])), ("cache_seqlens",)),
    "cache_seqlens-int64": (dict(cache_seqlens=torch.tensor([100, 64])), ("cache_seqlens",)),
    "cache_seqlens-wrong-batch": (dict(cache_seqlens=i32([100, 64, 3])), ("cache_seqlens",)),
    "block_table-int64": (dict(block_table=torch.tensor([[0, 1], [2, 3]])), ("block_table",)),
    "block_table-rank1": (dict(block_table=i32([0, 1, 2, 3])), ("block_table",)),
    "block_table-wrong-batch": (dict(block_table=i32([[0, 1]])), ("block_table",)),
    "block_table-page-out-of-range": (dict(block_table=i32([[0, 9], [2, 3]])), ("block_table",)),
    "q-rank3": (dict(q=r(2, 4, 72)), ("q",)),
    "kv_cache-rank3": (dict(kv_cache=r(4, 64, 72)), ("kv_cache",)),
    "head-dim-mismatch": (dict(kv_cache=r(4, 64, 1, 80)), ("kv_cache", "q")),
    "dtype-mismatch": (dict(kv_cache=r(4, 64, 1, 72, dtype=torch.float64)), ("kv_cache",)),
    "heads-not-divisible": (dict(kv_cache=r(4, 64, 3, 72)), ("kv_cache", "q")),
    "head_dim_v-too-large": (dict(head_dim_v=80), ("head_dim_v",)),
    "head_dim_v-zero": (dict(head_dim_v=0), ("head_dim_v",)),
    "noncontig-q": (dict(q=noncontig_last(2, 1, 4, 72)), ("q",)),
    "noncontig-kv_cache": (dict(kv_cache=noncontig_last(4, 64, 1, 72)), ("kv_cache",)),
}


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("case", list(MLA_CASES), ids=str)
def test_mla_bad(which, case):
    over, names = MLA_CASES[case]
    a = mla_args(**over)
    f = impl(which, "mla_decode")
    expect_error(lambda: f(a["q"], a["kv_cache"], a["block_table"], a["cache_seqlens"], head_dim_v=a["head_dim_v"]),
                 *names)


@pytest.mark.parametrize("which", IMPLS)
def test_mla_metadata_bad(which):
    f = impl(which, "mla_decode_metadata")
    expect_error(lambda: f(torch.tensor([3, 4]), 16), "cache_seqlens")
    expect_error(lambda: f(i32([[3, 4]]), 16), "cache_seqlens")
    expect_error(lambda: f(i32([3, 4]), 0), "num_q_heads")
    expect_error(lambda: f(i32([3, 4]), 16, 0), "num_kv_heads")
    expect_error(lambda: f(i32([3, 4]), 16, 1, 0), "q_len")
    expect_error(lambda: f(i32([3, 4]), 3, 2), "num_kv_heads", "num_q_heads")


# ----------------------------------------------------------------------------- sparse


def sp_call(which, *, indices=None, q=None, k=None):
    q = r(1, 3, 2, 4) if q is None else q
    k = r(1, 5, 2, 4) if k is None else k
    v = r(*k.shape)
    indices = i32([[[[0, 1], [2, -1]]] * 3]) if indices is None else indices
    return impl(which, "sparse_attention")(q, k, v, indices)


SPARSE_CASES = {
    "indices-float": (dict(indices=torch.zeros(1, 3, 2, 2)), ("indices",)),
    "indices-int16": (dict(indices=torch.zeros(1, 3, 2, 2, dtype=torch.int16)), ("indices",)),
    # DESIGN.md / design-decisions.md: indices int32
    "indices-int64": (dict(indices=torch.zeros(1, 3, 2, 2, dtype=torch.int64)), ("indices",)),
    "indices-rank3": (dict(indices=torch.zeros(1, 3, 2, dtype=torch.int32)), ("indices",)),
    "indices-shape-mismatch": (dict(indices=torch.zeros(1, 4, 2, 2, dtype=torch.int32)), ("indices",)),
    "indices-heads-mismatch": (dict(indices=torch.zeros(1, 3, 1, 2, dtype=torch.int32)), ("indices",)),
    "indices-out-of-range": (dict(indices=torch.full((1, 3, 2, 1), 5, dtype=torch.int32)), ("indices",)),
    "indices-below-minus-one": (dict(indices=torch.full((1, 3, 2, 1), -2, dtype=torch.int32)), ("indices",)),
    "q-rank3": (dict(q=r(3, 2, 4)), ("q",)),
    "batch-mismatch": (dict(k=r(2, 5, 2, 4)), ("k", "q")),
}


@pytest.mark.parametrize("which", IMPLS)
@pytest.mark.parametrize("case", list(SPARSE_CASES), ids=str)
def test_sparse_bad(which, case):
    kw, names = SPARSE_CASES[case]
    expect_error(lambda: sp_call(which, **kw), *names)


def test_sparse_duplicates_rejected_by_reference():
    """docs/design-decisions.md: duplicates are not allowed; the reference checks (kernels do not)."""
    expect_error(lambda: sp_call("reference", indices=i32([[[[1, 1], [2, -1]]] * 3])), "indices")


def test_import_under_too_old_torch_says_what_to_install():
    """The stable ABI of torch 2.11 is the floor: an older torch gets an ImportError naming it."""
    import subprocess
    import sys
    code = "import torch; torch.__version__ = '2.10.1+cu128'\ntry:\n    import attnx\nexcept ImportError as e:\n" \
           "    print('ImportError:', e)\nelse:\n    print('imported')"
    import os
    # the attnx under test (installed or the source tree), not whatever the cwd would give
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(attnx.__file__))}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(__file__))
    assert "ImportError: attnx" in run.stdout and "torch >= 2.11" in run.stdout and "2.10.1" in run.stdout, \
        run.stdout + run.stderr

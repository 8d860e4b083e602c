"""Shared test helpers for attnx.

Everything here is independent of attnx: the naive attention below is the textbook
definition (float64, one query row at a time), so the expected values of the tests never
come from the code under test.
"""
from __future__ import annotations

import math
import os
import random
import re
import sys

import pytest
import torch

# Tests import the installed attnx (README: `pip install --no-build-isolation .`); from a plain
# checkout without an install, fall back to the source tree (the same as PYTHONPATH=python).
try:
    import attnx  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

HAS_CUDA = torch.cuda.is_available()

# GPU tests (reference vs kernel) use this marker; on a CPU-only machine they are skipped.
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

# Relative-error budgets per input dtype (output rounded to the input dtype).
TOL = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 2e-2,
}


def pytest_configure(config):
    config.addinivalue_line("markers", "requires_cuda: needs a CUDA GPU (skipped without one)")


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same seeds (torch, python); keeps CPU threads low."""
    torch.manual_seed(0)
    random.seed(0)
    yield


# The machine is shared: one intra-op thread keeps the suite from fighting other jobs.
torch.set_num_threads(1)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64. Fails (AssertionError) on NaN in either tensor or a shape
    mismatch. Entries that are -inf/+inf in both tensors at the same positions are ignored;
    an inf in only one of them fails. With ||b|| == 0 the absolute error ||a|| is returned."""
    a = torch.as_tensor(a).detach().to("cpu", torch.float64)
    b = torch.as_tensor(b).detach().to("cpu", torch.float64)
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != expected {tuple(b.shape)}"
    assert not torch.isnan(a).any(), f"NaN in the result ({int(torch.isnan(a).sum())} entries)"
    assert not torch.isnan(b).any(), "NaN in the expected value"
    ia, ib = torch.isinf(a), torch.isinf(b)
    if ia.any() or ib.any():
        assert torch.equal(ia, ib), (
            f"inf positions differ: result has {int(ia.sum())} infs, expected {int(ib.sum())} "
            f"(first mismatch at {tuple(torch.nonzero(ia != ib)[0].tolist())})")
        assert torch.equal(a[ia], b[ib]), "inf signs differ"
        a = torch.where(ia, torch.zeros_like(a), a)
        b = torch.where(ib, torch.zeros_like(b), b)
    nb = torch.linalg.vector_norm(b).item()
    nd = torch.linalg.vector_norm(a - b).item()
    return nd if nb == 0 else nd / nb


def assert_close(actual, expected, tol, what="out"):
    e = rel_err(actual, expected)
    assert e <= tol, f"{what}: relative error {e:.3g} > {tol:.3g}"


def naive_rows(q, k, v, visible, scale):
    """Textbook attention, one query at a time, in float64.

    q [Lq, D], k [Lk, D], v [Lk, Dv]; visible(i) -> iterable of key indices (or a bool row
    [Lk]). Returns out [Lq, Dv] (float64) and lse [Lq] (float64, natural log; -inf and out 0
    for a query that sees no key)."""
    q, k, v = (t.detach().to(torch.float64) for t in (q, k, v))
    lq, dv = q.shape[0], v.shape[-1]
    out = torch.zeros(lq, dv, dtype=torch.float64)
    lse = torch.full((lq,), float("-inf"), dtype=torch.float64)
    for i in range(lq):
        keys = visible(i)
        if isinstance(keys, torch.Tensor) and keys.dtype == torch.bool:
            keys = torch.nonzero(keys).flatten().tolist()
        keys = list(keys)
        if not keys:
            continue
        idx = torch.tensor(keys, dtype=torch.long)
        s = (k[idx] @ q[i]) * scale
        m = s.max()
        p = torch.exp(s - m)
        z = p.sum()
        out[i] = (p / z) @ v[idx]
        lse[i] = m + torch.log(z)
    return out, lse


def naive_masked(q, k, v, mask, scale):
    """Naive attention with a dense bool mask [Lq, Lk] (True = visible)."""
    return naive_rows(q, k, v, lambda i: mask[i], scale)


def names_arg(msg: str, *names: str) -> bool:
    """True if the error message mentions one of the argument names as a word."""
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", msg) for n in names)


def default_scale(d: int) -> float:
    return 1.0 / math.sqrt(d)


def force_small_chunks(monkeypatch, elements: int = 48):
    """Make the references split queries into many tiny chunks (exercises chunk boundaries).

    Relies on attnx.reference._core.CHUNK_ELEMENTS (the references' temporary-size bound); the
    calling test is skipped if that knob no longer exists."""
    core = pytest.importorskip("attnx.reference._core")
    if not hasattr(core, "CHUNK_ELEMENTS"):
        pytest.skip("attnx.reference._core.CHUNK_ELEMENTS is gone")
    monkeypatch.setattr(core, "CHUNK_ELEMENTS", elements)


def fwd_bwd(f, inputs, seed=1):
    """out, lse and the gradients of (out, lse) w.r.t. inputs for random cotangents (lse's
    cotangent is zero on empty rows)."""
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out, lse = f(*xs)
    g = torch.Generator().manual_seed(seed)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    gl = torch.randn(lse.shape, generator=g, dtype=torch.float64).to(lse.dtype)
    lse_safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    grads = torch.autograd.grad([out, lse_safe], xs, [go, gl], allow_unused=True)
    grads = [torch.zeros_like(x) if gr is None else gr for x, gr in zip(xs, grads)]
    return out.detach(), lse.detach(), grads

"""Shared pieces of the bench CLI: the run context, case/impl descriptors, the correctness check.

A *case* is one problem of one family (sizes fixed); it knows how to build one input set on the
device (several sets rotate so the inputs exceed L2), the expected output on a check subset
(computed with attnx.reference), and the FLOPs / bytes one call moves. An *impl* is one thing
timed on that problem: attnx itself, a peer from PyTorch, or a device ceiling.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

# Relative-error budgets (||a - b|| / ||b|| in float64) of a result against attnx.reference.
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float32: 1e-4, torch.float64: 1e-8}

MODES = ("full", "quick", "cpu", "cpu-quick")


class NotAvailable(Exception):
    """A peer that cannot run here (missing API, unsupported config): becomes an "n/a: ..." row."""


@dataclass
class TimingConfig:
    min_runs: int
    min_time_s: float
    max_time_s: float
    max_runs: int
    warmup_calls: int
    slow_first_s: float  # a first call slower than this: only `slow_runs` timed runs
    slow_runs: int = 3


TIMING = {
    "full": TimingConfig(min_runs=25, min_time_s=0.5, max_time_s=3.0, max_runs=2000, warmup_calls=3, slow_first_s=2.0),
    "quick": TimingConfig(min_runs=10, min_time_s=0.1, max_time_s=1.0, max_runs=500, warmup_calls=2, slow_first_s=1.0),
    "cpu": TimingConfig(min_runs=3, min_time_s=0.1, max_time_s=0.3, max_runs=20, warmup_calls=0, slow_first_s=0.5),
    "cpu-quick": TimingConfig(min_runs=3, min_time_s=0.05, max_time_s=0.2, max_runs=10, warmup_calls=0,
                              slow_first_s=0.2),
}


@dataclass
class Ctx:
    """Everything a case needs to know about this run."""
    device: torch.device
    mode: str
    dtype: torch.dtype
    timing: TimingConfig
    l2_bytes: int = 50 << 20
    max_ref_seconds: float = 20.0
    info: dict = field(default_factory=dict)  # attnx.info(), fetched once
    ceilings: dict = field(default_factory=dict)  # "copy_gbps", "read_gbps", "matmul_tflops" once measured
    progress: bool = True
    peers: tuple | None = None  # --peer: substrings of the peer names to time (None: all)
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def cpu(self) -> bool:
        return self.device.type == "cpu"

    @property
    def quick(self) -> bool:
        return self.mode in ("quick", "cpu-quick")

    def log(self, msg: str):
        if self.progress:
            print(f"[attnx bench {time.perf_counter() - self.t_start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def op_status(self, *ops: str) -> str:
        """"native" / "reference" (CUDA) from attnx.info(); on the CPU everything is the reference."""
        if not self.cuda:
            return "reference"
        states = []
        for op in ops:
            s = str(self.info.get("ops", {}).get(op, {}).get("cuda", "reference"))
            states.append("native" if s.startswith("native") else "reference")
        if all(s == "native" for s in states):
            return "native"
        if all(s == "reference" for s in states):
            return "reference"
        return "partial: " + ", ".join(f"{o}={s}" for o, s in zip(ops, states))


@dataclass
class Impl:
    """One timed implementation of a case.

    ``run(prepared_set)`` is what is timed; ``prepare(base_set)`` (untimed) builds its inputs
    from a base input set (layout changes, block masks); ``output(result)`` turns run's result
    into attnx's output layout (for the check); ``setup(first_base_set)`` runs once and may raise
    NotAvailable. ``kernel`` is "native"/"reference" for attnx, a callable of the first base set
    giving it, or "peer"/"torch". ``ref_seconds`` estimates one call when this impl runs the
    (slow) reference, so a too-slow one can be skipped.
    """
    name: str
    run: Callable[[Any], Any]
    kind: str = "peer"  # "attnx" | "peer" | "ceiling"
    prepare: Optional[Callable[[Any], Any]] = None
    output: Optional[Callable[[Any], torch.Tensor]] = None
    setup: Optional[Callable[[Any], None]] = None
    kernel: Any = "peer"
    flops: Optional[float] = None  # overrides the case's
    nbytes: Optional[float] = None
    ref_seconds: float = 0.0
    note: str = ""
    check: bool = True  # False: computes a different function (e.g. dense beside sparse), not compared


@dataclass
class Case:
    family: str
    name: str
    make_set: Callable[[int], Any]  # seed -> one base input set (a dict of device tensors)
    impls: Callable[[], list]  # -> [Impl], built lazily (peers probe APIs)
    set_bytes: int = 0  # bytes of one input set (for the L2 rotation)
    expected: Optional[Callable[[Any], torch.Tensor]] = None  # base set -> reference output on the check subset
    subset: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # full output -> the check subset
    check_ref_seconds: float = 0.0  # estimated cost of `expected`
    flops: Optional[float] = None
    nbytes: Optional[float] = None
    dtype: Optional[torch.dtype] = None
    params: dict = field(default_factory=dict)
    note: str = ""
    ceiling: Optional[str] = None  # for ceilings: which ctx.ceilings key the first impl measures
    max_sets: int = 8


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (nan if either has a NaN; positions that are inf in both ignored)."""
    a = a.detach().to(torch.float64)
    b = b.detach().to(a.device, torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape {tuple(a.shape)} != reference shape {tuple(b.shape)}")
    if bool(torch.isnan(a).any()) or bool(torch.isnan(b).any()):
        return float("nan")
    both = torch.isinf(a) & torch.isinf(b) & (a == b)
    if bool(both.any()):
        a = torch.where(both, torch.zeros_like(a), a)
        b = torch.where(both, torch.zeros_like(b), b)
    if bool(torch.isinf(a).any()) or bool(torch.isinf(b).any()):
        return float("inf")
    nb = torch.linalg.vector_norm(b).item()
    nd = torch.linalg.vector_norm(a - b).item()
    return nd if nb == 0 else nd / nb


def randn(shape, ctx: Ctx, dtype=None) -> torch.Tensor:
    return torch.randn(shape, device=ctx.device, dtype=dtype or ctx.dtype)


def attention_flops(batch: int, heads: int, head_dim: int, pairs: float, head_dim_v: Optional[int] = None) -> float:
    """Forward FLOPs: 2 * D per pair for QK^T plus 2 * Dv per pair for PV (= 4 * D * pairs when Dv = D)."""
    dv = head_dim if head_dim_v is None else head_dim_v
    return 2.0 * batch * heads * (head_dim + dv) * pairs


def causal_pairs(lq: int, lk: int) -> int:
    """Attended pairs of bottom-right aligned causal attention: query i sees keys j <= i + lk - lq."""
    counts = torch.arange(lq, dtype=torch.int64) + (lk - lq + 1)
    return int(counts.clamp(0, lk).sum())


def last_batch_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """x [B, ..., H, D] -> its last batch element and last ``heads`` heads, contiguous."""
    return x[-1:, ..., x.shape[-2] - heads:, :].contiguous()


def gathered_ref_seconds(batch: int, lq: int, lk: int, heads: int, keys: int, d: int, dv: int,
                         host_per_chunk_s: float, cuda: bool) -> float:
    """Rough cost of attnx's gathered references (neighbourhood, block-sparse, sparse) for one call.

    They process query chunks of about 2**26 / (B * H * keys * (D + Dv + 2)) rows; per chunk
    they pay host work (index building), a full fp32 conversion of k and v, and the gather itself.
    """
    rows = max(1, (1 << 26) // max(1, batch * heads * max(1, keys) * (d + dv + 2)))
    chunks = math.ceil(lq / rows)
    bw = 1.5e12 if cuda else 1.0e10
    convert = batch * lk * heads * (d + dv) * 6 / bw
    gather = batch * lq * heads * keys * (d + dv) * 16 / bw
    return chunks * (host_per_chunk_s + convert + 2e-4) + gather


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else (f"{s:.1f} s" if s >= 1 else f"{s:.2g} s")

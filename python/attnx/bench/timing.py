"""Timing: CUDA events on the GPU (warm-up, median of many runs, rotating input sets), perf_counter on the CPU."""
from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Sequence

import torch

from .common import Ctx


def num_sets(ctx: Ctx, set_bytes: int, max_sets: int = 8) -> int:
    """How many input sets to rotate among so that together they exceed L2 (twice over) on the GPU."""
    if not ctx.cuda or set_bytes <= 0:
        return 1
    n = max(1, math.ceil(2 * ctx.l2_bytes / set_bytes))
    n = min(n, max_sets)
    try:  # never let the rotation itself take more than a quarter of the free memory
        free, _ = torch.cuda.mem_get_info(ctx.device)
        n = max(1, min(n, int(0.25 * free // max(1, set_bytes))))
    except Exception:
        pass
    return n


def first_call(ctx: Ctx, run: Callable, arg: Any):
    """One untimed call (warm-up, compile); returns (result, seconds it took)."""
    ctx.sync()
    t0 = time.perf_counter()
    out = run(arg)
    ctx.sync()
    return out, time.perf_counter() - t0


def _summary(times_ms: Sequence[float]) -> dict:
    return {"ms": statistics.median(times_ms), "ms_min": min(times_ms), "ms_max": max(times_ms), "runs": len(times_ms)}


def _event_ms(ctx: Ctx, run: Callable, arg: Any) -> float:
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    run(arg)
    e.record()
    torch.cuda.synchronize(ctx.device)
    return s.elapsed_time(e)


def _perf_ms(ctx: Ctx, run: Callable, arg: Any) -> float:
    t0 = time.perf_counter()
    run(arg)
    ctx.sync()
    return (time.perf_counter() - t0) * 1e3


def _run_count(cfg, est_s: float) -> int:
    est_s = max(est_s, 1e-6)
    n = max(cfg.min_runs, math.ceil(cfg.min_time_s / est_s))
    return min(n, cfg.max_runs, max(cfg.min_runs, int(cfg.max_time_s / est_s)))


def _time(ctx: Ctx, run: Callable, sets: Sequence[Any], first_s: float, one: Callable) -> dict:
    """Shared logic: a slow first call (compilation, or a slow reference) is followed by one more
    call; if that is slow too, only ``slow_runs`` calls are timed in all, else the usual warm-up
    and many runs. ``one(ctx, run, arg)`` times one call in ms."""
    cfg = ctx.timing
    n_sets = len(sets)
    if first_s > cfg.slow_first_s:
        t = one(ctx, run, sets[1 % n_sets])
        if t / 1e3 > cfg.slow_first_s:
            times = [t] + [one(ctx, run, sets[(i + 2) % n_sets]) for i in range(cfg.slow_runs - 1)]
            return _summary(times)
        est = t / 1e3
    else:
        est = first_s
    if ctx.cuda:
        k = max(1, cfg.warmup_calls)  # warm-up calls double as an estimate of one call
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for i in range(k):
            run(sets[(i + 1) % n_sets])
        e.record()
        torch.cuda.synchronize(ctx.device)
        est = s.elapsed_time(e) / 1e3 / k
    n = _run_count(cfg, est)
    if not ctx.cuda:
        return _summary([one(ctx, run, sets[i % n_sets]) for i in range(n)])
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):  # back to back: one event pair per call, no host sync in between
        arg = sets[i % n_sets]
        starts[i].record()
        run(arg)
        ends[i].record()
    torch.cuda.synchronize(ctx.device)
    return _summary([a.elapsed_time(b) for a, b in zip(starts, ends)])


def time_cuda(ctx: Ctx, run: Callable, sets: Sequence[Any], first_s: float) -> dict:
    """Median of CUDA-event times, one event pair per call, rotating among ``sets``."""
    return _time(ctx, run, sets, first_s, _event_ms)


def time_cpu(ctx: Ctx, run: Callable, sets: Sequence[Any], first_s: float) -> dict:
    """Median of perf_counter times of a few calls."""
    return _time(ctx, run, sets, first_s, _perf_ms)


def time_impl(ctx: Ctx, run: Callable, sets: Sequence[Any], first_s: float) -> dict:
    return (time_cuda if ctx.cuda else time_cpu)(ctx, run, sets, first_s)

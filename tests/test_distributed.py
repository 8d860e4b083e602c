"""attnx.distributed on a process group of several local processes: gloo on the CPU (the
references as each rank's kernel, float64) and, with two or more GPUs, NCCL (the kernels, bf16).

One process group per (backend, world size) runs every case in tests/_dist_cases.py; each test
reads its case's result from every rank. The group runs under a timeout, so a hang fails.
"""
from __future__ import annotations

import json
import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

import _dist_cases

TIMEOUT_S = 600


def _run_group(backend: str, world: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_dist_cases.worker,
                             args=(r, world, backend, os.path.join(tmp, "init"), list(_dist_cases.CASES), tmp))
                 for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(TIMEOUT_S)
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
        results = {}
        for r in range(world):
            path = os.path.join(tmp, f"rank{r}.json")
            results[r] = json.load(open(path)) if os.path.exists(path) else None
        return {"hung": hung, "ranks": results, "codes": [p.exitcode for p in procs]}


_GROUPS: dict = {}


def _group(backend: str, world: int) -> dict:
    key = (backend, world)
    if key not in _GROUPS:
        _GROUPS[key] = _run_group(backend, world)
    return _GROUPS[key]


def _configs():
    configs = [("gloo", 2), ("gloo", 3)]
    if torch.cuda.is_available() and torch.cuda.device_count() >= 2:
        configs.append(("nccl", 2))
    if torch.cuda.is_available() and torch.cuda.device_count() >= 4:
        configs.append(("nccl", 4))
    return configs


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
@pytest.mark.parametrize("config", _configs(), ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("case", list(_dist_cases.CASES))
def test_distributed(config, case):
    got = _group(*config)
    assert not got["hung"], f"ranks {got['hung']} still running after {TIMEOUT_S} s (a hang)"
    for rank, res in got["ranks"].items():
        assert res is not None, f"rank {rank} wrote no results (exit code {got['codes'][rank]})"
        assert res[case] == "ok", f"rank {rank}: {res[case]}"

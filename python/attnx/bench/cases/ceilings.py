"""ceilings: device copy and read bandwidth and the bf16 matmul rate, measured in the same run."""
from __future__ import annotations

import torch

from ..common import Case, Ctx, Impl

CEILINGS = {  # copy buffer bytes, read buffer bytes, matmul n, dtype
    "full": (2 << 30, 2 << 30, 8192, torch.bfloat16),
    "quick": (512 << 20, 1 << 30, 4096, torch.bfloat16),
    "cpu": (64 << 20, 64 << 20, 1024, torch.float32),
    "cpu-quick": (16 << 20, 16 << 20, 512, torch.float32),
}


def _gib(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.2f} GiB" if nbytes >= (1 << 30) else f"{nbytes / (1 << 20):.0f} MiB"


def ceilings(ctx: Ctx) -> list:
    copy_bytes, read_bytes, n, dt = CEILINGS[ctx.mode]
    read_dt = torch.bfloat16 if ctx.cuda else torch.float32
    dtn = str(dt).replace("torch.", "")

    def copy_set(i):
        src = torch.empty(copy_bytes // dt.itemsize, device=ctx.device, dtype=dt).normal_()
        return {"src": src, "dst": torch.empty_like(src)}

    def read_set(i):
        return {"x": torch.empty(read_bytes // read_dt.itemsize, device=ctx.device, dtype=read_dt).normal_()}

    def mm_set(i):
        return {"a": torch.randn(n, n, device=ctx.device, dtype=dt),
                "b": torch.randn(n, n, device=ctx.device, dtype=dt)}

    def ceiling(name, run):
        return lambda: [Impl(name=name, kind="ceiling", run=run, kernel="torch")]

    big = 1 << 40  # one set: these buffers are far larger than L2
    return [
        Case(family="ceilings", name=f"device copy {_gib(copy_bytes)} (read+write)", make_set=copy_set,
             impls=ceiling("torch copy_", lambda s: s["dst"].copy_(s["src"])), set_bytes=big,
             nbytes=2 * copy_bytes, dtype=dt, ceiling="copy_gbps", params={"bytes": copy_bytes, "primary": "bytes"}),
        Case(family="ceilings", name=f"read-only {str(read_dt).replace('torch.', '')} sum {_gib(read_bytes)}",
             make_set=read_set, impls=ceiling("torch sum", lambda s: s["x"].sum()), set_bytes=big,
             nbytes=read_bytes, dtype=read_dt, ceiling="read_gbps", params={"bytes": read_bytes, "primary": "bytes"}),
        Case(family="ceilings", name=f"{dtn} matmul {n}^3", make_set=mm_set,
             impls=ceiling("torch matmul", lambda s: s["a"] @ s["b"]), set_bytes=big, flops=2.0 * n ** 3, dtype=dt,
             ceiling="matmul_tflops", params={"n": n}),
    ]

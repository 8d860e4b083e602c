"""Process-group plumbing: rank and size, the device collectives run on, and the agreement check."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def rank_world(group) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("attnx.distributed: no process group: call torch.distributed.init_process_group first")
    return dist.get_rank(group), dist.get_world_size(group)


def comm_device(group, like: torch.Tensor) -> torch.device:
    """Where a small control tensor for this group lives: the current GPU for NCCL, else the CPU."""
    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device()) if not like.is_cuda else like.device
    return torch.device("cpu")


def dtype_code(dtype: torch.dtype) -> int:
    return _DTYPES.index(dtype) if dtype in _DTYPES else 99


def agree(op: str, group, like: torch.Tensor, fields: Sequence[tuple[str, int]], extra: Sequence[int] = ()):
    """Raise ValueError on every rank unless every rank passed the same ``fields`` (name, int).

    One all-gather of a few integers (a host sync): a shard whose length, head count or dtype
    differs from the group's would otherwise hang the ring or merge garbage. ``extra`` values
    ride along unchecked; returns every rank's extras.
    """
    rank, world = rank_world(group)
    mine = torch.tensor([v for _, v in fields] + list(extra), dtype=torch.int64, device=comm_device(group, like))
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    rows = [t.tolist() for t in every]
    for i, (name, _) in enumerate(fields):
        values = [r[i] for r in rows]
        if any(v != values[0] for v in values):
            shown = ", ".join(f"rank {j}: {_show(name, v)}" for j, v in enumerate(values))
            raise ValueError(f"{op}: the ranks disagree on {name} ({shown}); every rank must pass shards "
                             f"of the same shape and dtype (this is rank {rank} of {world})")
    return [r[len(fields):] for r in rows]


def _show(name: str, v: int) -> str:
    if name == "dtype":
        return str(_DTYPES[v]) if 0 <= v < len(_DTYPES) else "other"
    return str(v)

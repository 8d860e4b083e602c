"""The ring: send to the next rank, receive from the previous one; and the exact lse merge."""
from __future__ import annotations

import torch
import torch.distributed as dist


class RingExchange:
    """Point-to-point shifts around the group's ring through torch.distributed.

    ``shift(tensors)`` sends each tensor to rank r+1 and receives same-shaped ones from rank r-1,
    returning a handle whose ``wait()`` gives the received tensors. With NCCL the transfers run
    on NCCL's own stream: issued before the local attention they overlap it, and ``wait()`` only
    makes the compute stream wait for them. ``transfer=False`` (timing only) skips the transfers
    and hands back the sent tensors, to measure the schedule's compute alone.
    """

    def __init__(self, group, transfer: bool = True):
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.next = dist.get_global_rank(group, (self.rank + 1) % self.world) if group is not None \
            else (self.rank + 1) % self.world
        self.prev = dist.get_global_rank(group, (self.rank - 1) % self.world) if group is not None \
            else (self.rank - 1) % self.world
        self.transfer = transfer

    def shift(self, tensors):
        tensors = [t.contiguous() for t in tensors]
        if not self.transfer:
            return _Done(tensors)
        recv = [torch.empty_like(t) for t in tensors]
        ops = [dist.P2POp(dist.isend, t, self.next, self.group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, t, self.prev, self.group) for t in recv]
        return _Pending(dist.batch_isend_irecv(ops), recv)


class _Pending:
    def __init__(self, works, recv):
        self.works, self.recv = works, recv

    def wait(self):
        for w in self.works:
            w.wait()
        return self.recv


class _Done:
    def __init__(self, tensors):
        self.tensors = tensors

    def wait(self):
        return self.tensors


def merge_partial_(out_acc: torch.Tensor, lse_acc: torch.Tensor, out: torch.Tensor, lse: torch.Tensor):
    """Fold a partial result over more keys into (out_acc, lse_acc), in place and exactly.

    Two softmax attentions over disjoint key sets combine as lse = log(e^lse_a + e^lse_b) and
    out = e^(lse_a - lse) out_a + e^(lse_b - lse) out_b. A row that has seen no key yet has
    lse = -inf and out = 0; it stays so until a key arrives (no 0 * inf). NaN propagates.
    """
    new = torch.logaddexp(lse_acc, lse)
    empty = torch.isneginf(new)
    w_acc = torch.where(empty, 0.0, torch.exp(lse_acc - new)).unsqueeze(-1)
    w_new = torch.where(empty, 0.0, torch.exp(lse - new)).unsqueeze(-1)
    out_acc.mul_(w_acc).addcmul_(out, w_new)
    lse_acc.copy_(new)

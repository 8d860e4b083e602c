"""Reference block-sparse attention: Q tile t visits only its listed KV tiles.

With q/k/v [B, L, H, D] and tiles cut along the (flattened) token axis, Q tile t holds queries
[t * q_block, min((t + 1) * q_block, Lq)) and KV tile j holds keys [j * kv_block,
min((j + 1) * kv_block, Lk)). Query i in tile t attends, with one softmax, to every key of the
tiles kv_block_index[b, h, t, :kv_block_count[b, h, t]] (a batch or head dim of size 1
broadcasts). A tile visiting nothing gives out = 0 and lse = -inf.
"""
from __future__ import annotations

import torch

from .. import _validate as V
from ._core import default_scale, gathered_attention, gathered_attention_backward


def check_block_sparse(q, k, v, index, count, q_block, kv_block, *, check_values: bool = True):
    V.qkv(q, k, v, q_ndim=4)
    if q.shape[0] != k.shape[0]:
        V.fail("k", f"batch {k.shape[0]}", f"the batch of 'q' ({q.shape[0]})")
    V.int_arg("q_block", q_block, min_value=1)
    V.int_arg("kv_block", kv_block, min_value=1)
    b, lq, h = q.shape[:3]
    n_q_tiles = -(-lq // q_block)
    n_kv_tiles = -(-k.shape[1] // kv_block)
    V.tensor("kv_block_index", index, ndim=4, dtypes=(torch.int32,))
    V.tensor("kv_block_count", count, ndim=3, dtypes=(torch.int32,))
    if index.shape[0] not in (1, b) or index.shape[1] not in (1, h) or index.shape[2] != n_q_tiles:
        V.fail("kv_block_index", f"shape {tuple(index.shape)}", f"[B|1, H|1, num_q_tiles, max_count] with B={b}, H={h}, num_q_tiles={n_q_tiles}")
    if tuple(count.shape) != tuple(index.shape[:3]):
        V.fail("kv_block_count", f"shape {tuple(count.shape)}", f"{tuple(index.shape[:3])}, the first three dims of kv_block_index")
    for name, t in (("kv_block_index", index), ("kv_block_count", count)):
        if t.device != q.device:
            V.fail(name, f"device {t.device}", f"the device of 'q' ({q.device})")
    if check_values and count.numel():
        lo, hi = int(count.min()), int(count.max())
        if lo < 0 or hi > index.shape[3]:
            V.fail("kv_block_count", f"values in [{lo}, {hi}]", f"[0, max_count = {index.shape[3]}]")
        used = torch.arange(index.shape[3], device=index.device) < count[..., None]
        if bool(used.any()):
            vals = index[used]
            if int(vals.min()) < 0 or int(vals.max()) >= n_kv_tiles:
                V.fail("kv_block_index", f"tile ids in [{int(vals.min())}, {int(vals.max())}]", f"[0, {n_kv_tiles}) (KV tiles of {kv_block} tokens)")
            srt = torch.where(used, index, torch.full_like(index, -1)).sort(dim=-1).values
            if bool(((srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)).any()):
                V.fail("kv_block_index", "a KV tile listed twice for one Q tile", "distinct tiles")


def block_indices(index, count, rows: slice, q_block: int, kv_block: int, lk: int) -> torch.Tensor:
    """[B|1, c, H|1, max_count * kv_block] key positions of the queries ``rows``, -1 = none."""
    t = torch.arange(rows.start, rows.stop, device=index.device) // q_block
    tiles = index[:, :, t].long()  # [B', H', c, M]
    used = torch.arange(index.shape[3], device=index.device) < count[:, :, t, None]
    keys = tiles[..., None] * kv_block + torch.arange(kv_block, device=index.device)
    ok = used[..., None] & (keys < lk)
    keys = torch.where(ok, keys, torch.full_like(keys, -1)).flatten(-2)
    return keys.permute(0, 2, 1, 3)


def block_sparse_fwd(q, k, v, index, count, q_block, kv_block, scale):
    idx_of = lambda sl: block_indices(index, count, sl, q_block, kv_block, k.shape[1])  # noqa: E731
    return gathered_attention(q, k, v, idx_of, index.shape[3] * kv_block, default_scale(scale, q.shape[-1]))


def block_sparse_bwd(dout, dlse, q, k, v, index, count, q_block, kv_block, scale):
    idx_of = lambda sl: block_indices(index, count, sl, q_block, kv_block, k.shape[1])  # noqa: E731
    return gathered_attention_backward(dout, dlse, q, k, v, idx_of, index.shape[3] * kv_block,
                                       default_scale(scale, q.shape[-1]))


class _BlockSparseRef(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, index, count, q_block, kv_block, scale):
        out, lse = block_sparse_fwd(q, k, v, index, count, q_block, kv_block, scale)
        ctx.save_for_backward(q, k, v, index, count)
        ctx.args = (q_block, kv_block, scale)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, index, count = ctx.saved_tensors
        return (*block_sparse_bwd(dout, dlse, q, k, v, index, count, *ctx.args), None, None, None, None, None)


def block_sparse_attention(q, k, v, kv_block_index, kv_block_count, *, q_block, kv_block, scale=None,
                           return_lse=False):
    """Block-sparse attention over q/k/v [B, L, H, D]; see the module docstring."""
    check_block_sparse(q, k, v, kv_block_index, kv_block_count, q_block, kv_block)
    out, lse = _BlockSparseRef.apply(q, k, v, kv_block_index, kv_block_count, q_block, kv_block, scale)
    return (out, lse) if return_lse else out

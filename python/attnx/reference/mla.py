"""Reference MLA decode over a paged latent KV cache (DeepSeek-V2/V3 after weight absorption).

q [B, s_q, Hq, Dqk] (576 = 512 latent + 64 rope in DeepSeek), kv_cache [num_blocks, page_size,
Hk, Dqk], block_table int32 [B, max_pages], cache_seqlens int32 [B]. Token t of sequence b lives
at kv_cache[block_table[b, t // page_size], t % page_size]. Keys are all Dqk columns, values the
first head_dim_v; query head h reads KV head h // (Hq // Hk). With causal and s_q > 1, query t
sees the keys at positions <= cache_seqlens[b] - s_q + t (the s_q new tokens are the last ones
in the cache). A zero-length cache gives out = 0 and lse = -inf.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _validate as V
from ._core import lse_dtype
from .dense_varlen import attention_fwd

PAGE_SIZE = 64


class MLAMetadata(NamedTuple):
    """Split-KV plan for mla_decode (see docs/design-decisions.md); results never depend on it."""
    tile_scheduler_metadata: torch.Tensor  # int32 [num_parts, 8]
    num_splits: torch.Tensor  # int32 [B + 1], prefix sum of splits per sequence


def check_mla(q, kv_cache, block_table, cache_seqlens, head_dim_v, *, check_values: bool = True):
    V.tensor("q", q, ndim=4, dtypes=V.REFERENCE_DTYPES)
    V.tensor("kv_cache", kv_cache, ndim=4, dtypes=V.REFERENCE_DTYPES)
    V.same_dtype(q=q, kv_cache=kv_cache)
    V.tensor("block_table", block_table, ndim=2, dtypes=(torch.int32,))
    V.tensor("cache_seqlens", cache_seqlens, ndim=1, dtypes=(torch.int32,))
    V.same_device(q=q, kv_cache=kv_cache, block_table=block_table, cache_seqlens=cache_seqlens)
    b, _, hq, dqk = q.shape
    if kv_cache.shape[-1] != dqk:
        V.fail("kv_cache", f"head dim {kv_cache.shape[-1]}", f"the head dim of 'q' ({dqk})")
    hk = kv_cache.shape[2]
    if hk == 0 or hq % hk:
        V.fail("kv_cache", f"{hk} KV heads", f"a divisor of the {hq} query heads")
    if block_table.shape[0] != b:
        V.fail("block_table", f"batch {block_table.shape[0]}", f"the batch of 'q' ({b})")
    if cache_seqlens.shape[0] != b:
        V.fail("cache_seqlens", f"{cache_seqlens.shape[0]} entries", f"one per sequence ({b})")
    V.int_arg("head_dim_v", head_dim_v, min_value=1)
    if head_dim_v > dqk:
        V.fail("head_dim_v", head_dim_v, f"<= the head dim of 'q' ({dqk})")
    V.last_dim_contiguous("q", q)
    if not kv_cache.is_contiguous():
        V.fail("kv_cache", f"strides {tuple(kv_cache.stride())}", "a contiguous cache (call .contiguous())")
    if check_values:
        check_mla_values(kv_cache, block_table, cache_seqlens, check_pages=True)


def check_mla_values(kv_cache, block_table, cache_seqlens, *, check_pages: bool):
    """Lengths within the block table's capacity; with check_pages, used page ids inside the cache."""
    if cache_seqlens.numel() == 0:
        return
    cap = block_table.shape[1] * kv_cache.shape[1]
    lo, hi = int(cache_seqlens.min()), int(cache_seqlens.max())
    if lo < 0 or hi > cap:
        V.fail("cache_seqlens", f"values in [{lo}, {hi}]", f"[0, {cap}] (block table capacity: {block_table.shape[1]} pages of {kv_cache.shape[1]})")
    if not check_pages:
        return
    pages = (cache_seqlens.long() + kv_cache.shape[1] - 1) // kv_cache.shape[1]
    used = torch.arange(block_table.shape[1], device=block_table.device) < pages[:, None]
    if bool(used.any()):
        ids = block_table[used]
        if int(ids.min()) < 0 or int(ids.max()) >= kv_cache.shape[0]:
            V.fail("block_table", f"page ids in [{int(ids.min())}, {int(ids.max())}]", f"[0, {kv_cache.shape[0]}) (num_blocks of kv_cache)")


def mla_decode_fwd(q, kv_cache, block_table, cache_seqlens, head_dim_v, scale, causal):
    b, sq, hq, dqk = q.shape
    page = kv_cache.shape[1]
    scale = dqk ** -0.5 if scale is None else float(scale)
    out = q.new_zeros((b, sq, hq, head_dim_v))
    lse = q.new_full((b, sq, hq), float("-inf"), dtype=lse_dtype(q.dtype))
    lens = cache_seqlens.tolist()
    for i in range(b):
        n = lens[i]
        if n == 0 or sq == 0:
            continue
        pages = block_table[i, : (n + page - 1) // page].long()
        kv = kv_cache[pages].reshape(-1, *kv_cache.shape[2:])[:n]  # [n, Hk, Dqk]
        o, l = attention_fwd(q[i: i + 1], kv[None], kv[None, :, :, :head_dim_v], causal, scale)
        out[i], lse[i] = o[0], l[0]
    return out, lse


def mla_num_parts(device, num_q_heads: int, num_kv_heads: int, q_len: int, num_sms: int | None = None) -> int:
    """Split-KV parts per head group: the SMs shared among the (KV head, 64-row query block) groups."""
    if num_sms is None:
        num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132
    rows_per_group = max(1, num_q_heads // max(1, num_kv_heads)) * q_len
    return max(1, num_sms // max(1, num_kv_heads * -(-rows_per_group // 64)))


def mla_piece_fixed_cost(num_q_heads: int, num_kv_heads: int = 1, q_len: int = 1) -> int:
    """A piece's fixed cost in the split plan, in pages: its query block load and output store
    (bytes growing with the block's rows) plus its start and epilogue. Measured on an H100
    (2026-12-08, skewed against even batches): 5 for 64-row blocks, 3 for 16-row ones; interpolated
    in the rows between (csrc/kernels/mla/mla_api.h, same formula)."""
    block_rows = min(max(1, num_q_heads // max(1, num_kv_heads)) * q_len, 64)
    return 2 + (3 * block_rows + 32) // 64


def mla_decode_metadata_fwd(cache_seqlens, num_q_heads: int, num_kv_heads: int = 1, q_len: int = 1,
                            num_sms: int | None = None):
    """Balanced split-KV plan: cut the (sequence, page) work list into equally costly parts."""
    num_parts = mla_num_parts(cache_seqlens.device, num_q_heads, num_kv_heads, q_len, num_sms)
    pages = [-(-n // PAGE_SIZE) for n in cache_seqlens.tolist()]
    fixed = mla_piece_fixed_cost(num_q_heads, num_kv_heads, q_len)  # a piece's fixed cost, in pages
    split = 1  # more for a piece of a split sequence (partials stored, then read by the combine)

    def walk(per_part):
        """Cut in sequence order, each part but the last spending at most per_part (a piece costs
        fixed + its pages, + split unless it is a whole sequence); the last takes the rest. Returns the parts' rows, the pieces per
        sequence and the last part's cost."""
        rows, counts, b, page_pos, slot, cost = [], [0] * len(pages), 0, 0, 0, 0
        for p in range(num_parts):
            begin = (b, page_pos * PAGE_SIZE, slot)
            budget, cost = (per_part if p < num_parts - 1 else float("inf")), 0
            while b < len(pages) and budget > fixed:  # a piece that cannot take a page is not started
                left = pages[b] - page_pos
                extra = split if page_pos > 0 or left + fixed > budget else 0
                if budget <= fixed + extra:
                    break
                budget -= fixed + extra
                take = min(left, budget)
                page_pos += take
                budget -= take
                cost += fixed + extra + take
                counts[b] += 1  # one partial result of sequence b comes from this part
                slot += 1
                if page_pos >= pages[b]:
                    b, page_pos = b + 1, 0
            rows.append([*begin[:2], b, page_pos * PAGE_SIZE, begin[2], 0, 0, 0])
        return rows, counts, cost

    # The smallest per-part budget with which the last part is no costlier than the others (a
    # binary search: the cost of a plan is its costliest part, each piece paying `fixed`).
    total = sum(pages) + fixed * len(pages)
    lo, hi = max(fixed + 1, -(-total // num_parts)), total + fixed + 1  # hi: the first part takes everything
    while lo < hi:
        mid = (lo + hi) // 2
        if walk(mid)[2] <= mid:
            hi = mid
        else:
            lo = mid + 1
    rows, counts, _ = walk(lo)
    meta = torch.tensor(rows, dtype=torch.int32).reshape(num_parts, 8)
    num_splits = torch.zeros(len(pages) + 1, dtype=torch.int32)
    num_splits[1:] = torch.cumsum(torch.tensor(counts, dtype=torch.int32), 0)
    return MLAMetadata(meta.to(cache_seqlens.device), num_splits.to(cache_seqlens.device))


def mla_decode_metadata(cache_seqlens, num_q_heads, num_kv_heads=1, q_len=1):
    """Plan the split-KV decode for these sequence lengths (int32 [B]); see MLAMetadata."""
    check_metadata(cache_seqlens, num_q_heads, num_kv_heads, q_len)
    return mla_decode_metadata_fwd(cache_seqlens, num_q_heads, num_kv_heads, q_len)


def check_metadata(cache_seqlens, num_q_heads, num_kv_heads, q_len):
    V.tensor("cache_seqlens", cache_seqlens, ndim=1, dtypes=(torch.int32,))
    V.int_arg("num_q_heads", num_q_heads, min_value=1)
    V.int_arg("num_kv_heads", num_kv_heads, min_value=1)
    V.int_arg("q_len", q_len, min_value=1)
    if num_q_heads % num_kv_heads:
        V.fail("num_kv_heads", num_kv_heads, f"a divisor of num_q_heads ({num_q_heads})")


def mla_decode(q, kv_cache, block_table, cache_seqlens, *, head_dim_v=512, scale=None, causal=False, metadata=None):
    """Decode attention over the paged latent cache; returns (out [B, s_q, Hq, head_dim_v], lse [B, s_q, Hq])."""
    check_mla(q, kv_cache, block_table, cache_seqlens, head_dim_v)
    return mla_decode_fwd(q, kv_cache, block_table, cache_seqlens, head_dim_v, scale, bool(causal))

"""One DeepSeek-V3 attention layer decoding over a paged latent cache: absorbed (attnx) vs un-absorbed.

DeepSeek-V3's multi-head latent attention has 128 heads; per head the queries and keys have a 128-wide
"nope" part and a 64-wide rotary part (192 in all) and the values are 128 wide. The keys and values of
all heads come from one 512-wide latent c_kv per token (K_nope = c_kv W_UK^T, V = c_kv W_UV per head)
plus one 64-wide rotary key k_pe that all heads share, so the cache holds 576 numbers per token.
With the up-projections absorbed (W_UK into the query, W_UV applied after the attention), decode attends
over that latent cache directly: q [B, s, 128, 576] against kv_cache [pages, 64, 1, 576], the values
being its first 512 columns. attnx.nn.MLADecoder does this with attnx.mla_decode (the native Hopper
kernel on CUDA for fp16/bf16). This script runs decode steps of such a layer and checks every step
against the same layer computed the straightforward way: the latent cache expanded into per-head K and
V with W_UK and W_UV, then plain softmax attention in float32.

    PYTHONPATH=python python examples/deepseek_mla_decode.py               # CUDA: bf16, DeepSeek-V3 sizes
    PYTHONPATH=python python examples/deepseek_mla_decode.py --device cpu  # small sizes, the reference
    PYTHONPATH=python python examples/deepseek_mla_decode.py --s-q 2       # two new tokens per step (MTP)
"""
from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

import attnx

PAGE = 64


def rope(x, pos, base: float = 10000.0):
    """Rotary embedding (rotate-half form) of x [B, s, H, d] at positions pos [B, s]."""
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    ang = pos.to(torch.float32)[..., None, None] * inv  # [B, s, 1, d/2]
    cos, sin = torch.cos(ang), torch.sin(ang)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class DeepSeekMLA(nn.Module):
    """DeepSeek-V3's attention layer (q LoRA, latent KV with decoupled RoPE), decoding with absorbed weights.

    ``self.attn`` (attnx.nn.MLADecoder) holds W_UK [H, 128, 512] and W_UV [H, 512, 128], the two halves
    of DeepSeek's wkv_b, and runs the absorbed attention over the paged latent cache."""

    def __init__(self, hidden=7168, heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_nope=128, qk_rope=64,
                 v_head=128):
        super().__init__()
        self.heads, self.kv_lora_rank, self.qk_nope, self.qk_rope = heads, kv_lora_rank, qk_nope, qk_rope
        self.wq_a = nn.Linear(hidden, q_lora_rank, bias=False)
        self.q_norm = nn.RMSNorm(q_lora_rank, eps=1e-6)
        self.wq_b = nn.Linear(q_lora_rank, heads * (qk_nope + qk_rope), bias=False)
        self.wkv_a = nn.Linear(hidden, kv_lora_rank + qk_rope, bias=False)
        self.kv_norm = nn.RMSNorm(kv_lora_rank, eps=1e-6)
        self.attn = attnx.nn.MLADecoder(heads, kv_lora_rank, qk_nope, qk_rope, v_head)
        self.wo = nn.Linear(heads * v_head, hidden, bias=False)

    def latent(self, x, pos):
        """x [B, s, hidden] at positions pos [B, s] -> the cache rows [B, s, 576]: c_kv (512) and roped k_pe (64)."""
        c_kv, k_pe = self.wkv_a(x).split([self.kv_lora_rank, self.qk_rope], dim=-1)
        return torch.cat([self.kv_norm(c_kv), rope(k_pe[..., None, :], pos)[..., 0, :]], dim=-1)

    def queries(self, x, pos):
        """x [B, s, hidden] -> q_nope [B, s, H, 128] and roped q_pe [B, s, H, 64]."""
        q = self.wq_b(self.q_norm(self.wq_a(x))).unflatten(-1, (self.heads, self.qk_nope + self.qk_rope))
        q_nope, q_pe = q.split([self.qk_nope, self.qk_rope], dim=-1)
        return q_nope, rope(q_pe, pos)

    def forward(self, x, pos, kv_cache, block_table, cache_seqlens, metadata=None):
        """One decode step: the s new tokens x [B, s, hidden] at positions pos [B, s] (the last s of each
        sequence: cache_seqlens already counts them) are written into the cache, then attend causally.
        Returns (layer output [B, s, hidden], attention output [B, s, H, 128], q_nope, q_pe)."""
        write_cache(kv_cache, block_table, pos, self.latent(x, pos))
        q_nope, q_pe = self.queries(x, pos)
        o = self.attn(q_nope, q_pe, kv_cache, block_table, cache_seqlens, causal=True, metadata=metadata)
        return self.wo(o.flatten(-2)), o, q_nope, q_pe


def write_cache(kv_cache, block_table, pos, rows):
    """kv_cache[page of (b, pos), pos % 64, 0] = rows[b, i] for every b, i (pos [B, s], rows [B, s, 576])."""
    page = block_table.gather(1, (pos // PAGE).long()).long()
    kv_cache[page, pos % PAGE, 0] = rows.to(kv_cache.dtype)


def unabsorbed_attention(layer, q_nope, q_pe, kv_cache, block_table, cache_seqlens):
    """The layer's attention the straightforward way, in float32: per sequence, expand the latent cache into
    per-head keys [n, H, 192] (c_kv W_UK^T beside the shared k_pe) and values [n, H, 128] (c_kv W_UV), then
    softmax attention; query t of s sees the keys at positions <= n - s + t. Returns [B, s, H, 128]."""
    w_uk, w_uv = layer.attn.w_uk.float(), layer.attn.w_uv.float()  # [H, 128, 512], [H, 512, 128]
    b, s, h, _ = q_nope.shape
    scale = (layer.qk_nope + layer.qk_rope) ** -0.5
    out = torch.zeros(b, s, h, w_uv.shape[-1], dtype=torch.float32, device=q_nope.device)
    for i, n in enumerate(cache_seqlens.tolist()):
        pages = block_table[i, : -(-n // PAGE)].long()
        lat = kv_cache[pages].reshape(-1, kv_cache.shape[-1])[:n].float()  # [n, 576]
        c_kv, k_pe = lat[:, : layer.kv_lora_rank], lat[:, layer.kv_lora_rank:]
        k = torch.cat([torch.einsum("nc,hdc->nhd", c_kv, w_uk), k_pe[:, None, :].expand(n, h, -1)], dim=-1)
        v = torch.einsum("nc,hcv->nhv", c_kv, w_uv)
        q = torch.cat([q_nope[i], q_pe[i]], dim=-1).float()  # [s, H, 192]
        scores = torch.einsum("shd,nhd->hsn", q, k) * scale
        visible = torch.arange(n, device=q.device)[None, :] <= (n - s + torch.arange(s, device=q.device))[:, None]
        p = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        out[i] = torch.einsum("hsn,nhv->shv", p, v)
    return out


def paged_cache(lengths, capacity, width, dtype, device, seed=0):
    """An empty paged cache with room for ``capacity[b]`` tokens per sequence, pages in random order:
    (kv_cache [num_pages, 64, 1, width], block_table int32 [B, max_pages])."""
    pages = [-(-c // PAGE) for c in capacity]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(sum(pages), generator=g).to(torch.int32)
    table = torch.zeros(len(lengths), max(pages), dtype=torch.int32)
    table[torch.arange(max(pages))[None, :] < torch.tensor(pages)[:, None]] = perm
    kv = torch.zeros(sum(pages), PAGE, 1, width, dtype=dtype, device=device)
    return kv, table.to(device)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def time_ms(fn, iters, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="default: bfloat16 on CUDA, else float32")
    p.add_argument("--batch", type=int, help="sequences (default: 16 on CUDA, else 3)")
    p.add_argument("--cache-len", type=int, help="longest history before the first step (default: 4096 on CUDA, "
                   "else 200); the others are random in [1, cache-len]")
    p.add_argument("--s-q", type=int, default=1, help="new tokens per sequence and step (2: MTP)")
    p.add_argument("--steps", type=int, default=2, help="decode steps, each checked")
    p.add_argument("--heads", type=int, default=128)
    p.add_argument("--hidden", type=int, help="model width (default: 7168 on CUDA, else 512)")
    p.add_argument("--q-lora", type=int, help="q LoRA rank (default: 1536 on CUDA, else 256)")
    p.add_argument("--iters", type=int, default=20, help="timed runs of the absorbed attention (CUDA only)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    batch = args.batch or (16 if cuda else 3)
    cache_len = args.cache_len or (4096 if cuda else 200)
    hidden = args.hidden or (7168 if cuda else 512)
    q_lora = args.q_lora or (1536 if cuda else 256)
    sq, steps = args.s_q, args.steps

    torch.manual_seed(args.seed)
    layer = DeepSeekMLA(hidden, args.heads, q_lora).to(device, dtype).eval()
    width = layer.kv_lora_rank + layer.qk_rope  # 576
    g = torch.Generator().manual_seed(args.seed)
    past = [cache_len] + torch.randint(1, cache_len + 1, (batch - 1,), generator=g).tolist()
    kv_cache, block_table = paged_cache(past, [n + steps * sq for n in past], width, dtype, device, args.seed)
    print(f"DeepSeek MLA layer: {args.heads} heads, nope {layer.qk_nope} + rope {layer.qk_rope}, kv_lora "
          f"{layer.kv_lora_rank}, v {layer.attn.d_v}, hidden {hidden}; {batch} sequences with histories of "
          f"{min(past)}-{max(past)} tokens; {steps} steps of {sq} token(s); {dtype} on {device}")

    with torch.inference_mode():
        # the history: latents of random hidden states written into the paged cache
        hist = torch.randn(batch, max(past), hidden, device=device, dtype=dtype)
        pos = torch.arange(max(past), device=device).expand(batch, -1)
        lat = layer.latent(hist, pos)
        keep = pos < torch.tensor(past, device=device)[:, None]
        bi, ti = torch.nonzero(keep, as_tuple=True)
        kv_cache[block_table[bi, ti // PAGE].long(), ti % PAGE, 0] = lat[bi, ti]
        del hist, lat

        tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}[dtype]
        lens = torch.tensor(past, device=device)
        worst = {"attention": 0.0, "layer": 0.0}
        for step in range(steps):
            x = torch.randn(batch, sq, hidden, device=device, dtype=dtype)
            pos = lens[:, None] + torch.arange(sq, device=device)  # the new tokens' positions
            lens = lens + sq
            seqlens = lens.to(torch.int32)
            metadata = attnx.mla_decode_metadata(seqlens, args.heads, 1, sq)  # once per step, for every layer
            y, o, q_nope, q_pe = layer(x, pos, kv_cache, block_table, seqlens, metadata=metadata)
            o_ref = unabsorbed_attention(layer, q_nope, q_pe, kv_cache, block_table, seqlens)
            y_ref = layer.wo(o_ref.to(dtype).flatten(-2))
            e_att = max(rel_err(o[i], o_ref[i]) for i in range(batch))
            e_lay = max(rel_err(y[i], y_ref[i]) for i in range(batch))
            worst["attention"] = max(worst["attention"], e_att)
            worst["layer"] = max(worst["layer"], e_lay)
            print(f"step {step}: absorbed vs un-absorbed, max relative error over the sequences: attention "
                  f"output {e_att:.2e}, layer output {e_lay:.2e} (tolerance {tol:g})")
        print(f"max relative error: {max(worst.values()):.2e}")
        assert max(worst.values()) < tol, f"relative error {max(worst.values()):.2e} >= {tol:g}"

        if cuda and args.iters > 0:
            q_shape = torch.empty(batch, sq, args.heads, width, device=device, dtype=dtype)  # what MLADecoder passes
            kernel = ("native" if attnx._native.covers("mla_decode", q_shape, kv_cache, head_dim_v=layer.kv_lora_rank)
                      else "reference")
            t = time_ms(lambda: layer.attn(q_nope, q_pe, kv_cache, block_table, seqlens, metadata=metadata), args.iters)
            tokens = int(seqlens.sum())
            print(f"absorbed attention (MLADecoder, mla_decode {kernel}) over {tokens} cached tokens: {t:.3f} ms "
                  f"({tokens * width * kv_cache.element_size() / t / 1e6:.0f} GB/s of cache)")
    return worst


if __name__ == "__main__":
    main()

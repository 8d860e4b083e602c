"""A BERT-base encoder layer, padded (plain PyTorch) vs padding-free (attnx), with shared weights.

The ByteTransformer setting: 64 sentences of at most 512 tokens, 60% of the max on average, so
40% of a padded batch is padding. The padded layer runs every linear, LayerNorm and the FFN on all
B * L positions and SDPA with a key-padding mask; the padding-free one packs the real tokens once
(attnx.unpad), runs everything on the T packed tokens with attnx.varlen_attention (through
attnx.nn.VarlenSelfAttention) and scatters back at the end (attnx.pad).

    PYTHONPATH=python python examples/bert_varlen_encoder.py               # CUDA: check + timing
    PYTHONPATH=python python examples/bert_varlen_encoder.py --device cpu  # tiny config, check only
"""
import argparse
import statistics

import torch
import torch.nn.functional as F
from torch import nn

import attnx


class EncoderLayer(nn.Module):
    """Post-LayerNorm BERT layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)); dropout off."""

    def __init__(self, hidden=768, heads=12, ffn=3072):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.attn = attnx.nn.VarlenSelfAttention(hidden, heads)  # fused qkv [3, H, D] and out projections
        self.ln1 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))
        self.ln2 = nn.LayerNorm(hidden)

    def forward_padded(self, x, mask):
        """(a) x [B, L, C], mask bool [B, L] (True = token) -> [B, L, C]; padded rows are garbage."""
        q, k, v = (t.transpose(1, 2) for t in  # [B, H, L, D]
                   self.attn.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).unbind(-3))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = self.ln1(x + self.attn.proj(a.transpose(1, 2).flatten(-2)))
        return self.ln2(x + self.ffn(x))

    def forward_packed(self, x, mask):
        """(b) same signature; all the work on the T real tokens only, zeros where padding is."""
        b, l, _ = x.shape
        xp, indices, cu_seqlens, max_seqlen = attnx.unpad(x, mask)  # [T, C]
        h = self.ln1(xp + self.attn(xp, cu_seqlens, max_seqlen))
        h = self.ln2(h + self.ffn(h))
        return attnx.pad(h, indices, b, l)


def encoder_padded(layer, x, mask, depth):
    for _ in range(depth):
        x = layer.forward_padded(x, mask)
    return x


def encoder_packed(layer, x, mask, depth):
    """A depth-layer encoder as ByteTransformer runs it: pack once, every layer on the T tokens, unpack once."""
    b, l, _ = x.shape
    h, indices, cu_seqlens, max_seqlen = attnx.unpad(x, mask)
    for _ in range(depth):
        h = layer.ln1(h + layer.attn(h, cu_seqlens, max_seqlen))
        h = layer.ln2(h + layer.ffn(h))
    return attnx.pad(h, indices, b, l)


def lengths(batch, max_len, seed=0):
    """Evenly spread over [0.2, 1] * max_len (mean exactly 0.6 * max_len), in a seeded random order."""
    order = torch.randperm(batch, generator=torch.Generator().manual_seed(seed)).tolist()
    return [max(1, round((0.2 + 0.8 * (i + 0.5) / batch) * max_len)) for i in order]


def time_ms(fn, iters, warmup=5):
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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="default: bfloat16 on CUDA, else float32")
    p.add_argument("--batch", type=int, help="default: 64 on CUDA, else 4")
    p.add_argument("--max-len", type=int, help="default: 512 on CUDA, else 64")
    p.add_argument("--iters", type=int, default=50, help="timed runs (CUDA only)")
    p.add_argument("--depth", type=int, default=12, help="layers of the timed encoder stack (BERT-base: 12)")
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    batch = args.batch or (64 if cuda else 4)
    max_len = args.max_len or (512 if cuda else 64)

    torch.manual_seed(0)
    layer = EncoderLayer().to(device, dtype).eval()
    lens = torch.tensor(lengths(batch, max_len), device=device)
    mask = torch.arange(max_len, device=device)[None, :] < lens[:, None]  # [B, L]
    x = torch.randn(batch, max_len, 768, device=device, dtype=dtype)  # padding holds noise: it must not leak
    tokens = int(lens.sum())
    print(f"{batch} sentences, max length {max_len}, mean {tokens / batch:.1f} ({tokens / (batch * max_len):.0%}), "
          f"{tokens} real tokens of {batch * max_len}; {dtype} on {device}")

    with torch.inference_mode():
        ref = layer.forward_padded(x, mask)[mask].double()
        out = layer.forward_packed(x, mask)[mask].double()
        err = ((out - ref).norm() / ref.norm()).item()
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        print(f"padding-free vs padded on the real tokens: rel err {err:.2e} (tolerance {tol:g})")
        assert err < tol, f"rel err {err:.2e} >= {tol:g}"
        ref = encoder_padded(layer, x, mask, 2)[mask].double()
        err = ((encoder_packed(layer, x, mask, 2)[mask].double() - ref).norm() / ref.norm()).item()
        print(f"2-layer stacks, padding-free vs padded: rel err {err:.2e}")
        assert err < 2 * tol, f"rel err {err:.2e} >= {2 * tol:g}"

    if cuda:
        # no_grad rather than inference_mode: cu_seqlens then keep a version counter, so attnx checks
        # their values once for the whole stack instead of once per layer (a host sync each).
        with torch.no_grad():
            t_pad = time_ms(lambda: layer.forward_padded(x, mask), args.iters)
            t_var = time_ms(lambda: layer.forward_packed(x, mask), args.iters)
            print(f"one layer, padded (SDPA, key mask):          {t_pad:.3f} ms")
            print(f"one layer, padding-free (unpad+layer+pad):   {t_var:.3f} ms  ({t_pad / t_var:.2f}x)")
            n = args.depth
            t_pad = time_ms(lambda: encoder_padded(layer, x, mask, n), args.iters)
            t_var = time_ms(lambda: encoder_packed(layer, x, mask, n), args.iters)
            print(f"{n}-layer encoder, padded:                   {t_pad:.3f} ms")
            print(f"{n}-layer encoder, padding-free (pack once): {t_var:.3f} ms  ({t_pad / t_var:.2f}x)")
            print(f"(medians of {args.iters} runs)")


if __name__ == "__main__":
    main()

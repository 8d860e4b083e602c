"""Fine-tuning a tiny transformer with dense vs PQ-sparse attention: the loss curves side by side.

Issue 7 asks whether SPT-style attention (attnx.nn.PQSparseSelfAttention: product quantization
picks each query's k_top keys, exact attention runs over those only) fine-tunes as well as dense
attention. This demo fine-tunes two copies of one small pre-LN transformer on a generated
associative-recall task and records both loss curves.

* The task: every token carries a key id; the first L - L/8 positions ("memory") also carry a
  value id, the last L/8 positions ("queries") a blank instead, and must predict the value that
  their key has in the memory. Keys are distinct within a sequence, so each query has to find
  exactly one of about L tokens: the attention it needs is genuinely sparse, and top-k attention
  with k_top = L/16 can match dense attention as long as the keys it picks include the right one.
* Pre-training, then fine-tuning: learnt from scratch at L = 1024 the task sits on a loss plateau
  for longer than this demo runs (for dense attention as well), so the dense model is first
  pre-trained at a short length (--pretrain-len, default L/8 and at least 32; learnt in a few hundred
  steps; --pretrain-steps 0 skips this). Its weights are then copied into the sparse twin (same
  qkv and output projections: the dense attention below reuses attnx.nn.modules._QKVProjection,
  so the state dicts match one to one) and both are fine-tuned at the full length with AdamW on
  the same batches in the same order (one generator seed). The dense model calls
  torch.nn.functional.scaled_dot_product_attention; the sparse one fits its PQ codebook on its
  first call and refreshes it every --refresh-every training steps.
* The outputs (under --out): pq_sparse_finetune.csv (per step: both train losses; both held-out
  losses every few steps, measured before that step's update, plus a last row after the final
  update), pq_sparse_finetune.svg (the curves on a log axis, hand-written SVG: no plotting
  library needed), and a printed summary: final losses (mean over the last 10% of steps), their
  ratio, held-out loss and recall accuracy, median wall time per step of each model.

With fully pre-trained weights (the default) both models start well below chance at L = 1024
and fine-tune to similar losses; with --pretrain-steps 150 pre-training can stop before the task
is learnt, and the fine-tuning curves then show each model learning the retrieval itself.

On CUDA the weights and activations are bf16 (head dim 64 or 128 keeps the selection, the sparse
attention and its backward on the native kernels; the printout says whether the native library
is loaded). On the CPU everything is float32 and runs the PyTorch references: keep sizes tiny there.

    PYTHONPATH=python python examples/pq_sparse_finetune.py               # CUDA: L=1024, k_top=64, 300 steps
    PYTHONPATH=python python examples/pq_sparse_finetune.py --device cpu  # tiny config (L=128)
    PYTHONPATH=python python examples/pq_sparse_finetune.py --device cpu --steps 3 --seq-len 64 \\
        --k-top 8 --dim 128 --layers 1 --batch 2 --out /tmp/ft            # smoke run
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import time
from typing import NamedTuple
from xml.sax.saxutils import escape

import torch
import torch.nn.functional as F
from torch import nn

import attnx
from attnx.nn.modules import _QKVProjection

NUM_VALUES = 64  # value vocabulary: a model that ignores the memory scores ln(64) = 4.16


# ----------------------------------------------------------------------------------------------
# data: associative recall
# ----------------------------------------------------------------------------------------------
def make_batch(gen: torch.Generator, batch: int, seq_len: int, num_keys: int):
    """One batch of the recall task, drawn from ``gen`` on its device (same seed -> same batches).

    Returns key ids [B, L], value ids [B, L] (NUM_VALUES = blank at the query positions) and the
    targets [B, L] (the value a query must recall, -100 = ignored at the memory positions)."""
    n_q = max(1, seq_len // 8)
    n_mem = seq_len - n_q
    # distinct keys per sequence: the first n_mem entries of a random permutation of the key ids
    dev = gen.device
    keys = torch.rand(batch, num_keys, generator=gen, device=dev).argsort(dim=1)[:, :n_mem]
    mem_vals = torch.randint(0, NUM_VALUES, (batch, n_mem), generator=gen, device=dev)
    # each query asks for a different memory slot, so no answer can be copied from another query
    slot = torch.rand(batch, n_mem, generator=gen, device=dev).argsort(dim=1)[:, :n_q]
    q_keys = keys.gather(1, slot)
    q_vals = mem_vals.gather(1, slot)
    key_ids = torch.cat([keys, q_keys], dim=1)
    val_ids = torch.cat([mem_vals, torch.full_like(q_vals, NUM_VALUES)], dim=1)
    targets = torch.cat([torch.full_like(mem_vals, -100), q_vals], dim=1)
    return key_ids, val_ids, targets


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------
class DenseSelfAttention(_QKVProjection):
    """The dense twin of attnx.nn.PQSparseSelfAttention: the same qkv/proj Linear layers and the same
    [3, H, D] split of the qkv output (inherited), so a state dict moves between the two unchanged."""

    def __init__(self, dim, num_heads, causal=False):
        super().__init__(dim, num_heads)
        self.causal = causal

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self._qkv(x))  # SDPA wants [B, H, L, D]
        o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(o.transpose(1, 2).flatten(-2))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, attn: nn.Module, dim: int):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(dim), attn
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    """Token = key embedding + value embedding (or the blank's); no position embedding: the task
    is pure content lookup. ``sparse`` picks the attention of every layer."""

    def __init__(self, args, sparse: bool):
        super().__init__()
        dim, heads = args.dim, args.heads

        def attention():
            if sparse:
                return attnx.nn.PQSparseSelfAttention(dim, heads, args.k_top, causal=args.causal,
                                                      num_centroids=args.centroids,
                                                      refresh_every=args.refresh_every)
            return DenseSelfAttention(dim, heads, causal=args.causal)

        self.key_emb = nn.Embedding(args.num_keys, dim)
        self.val_emb = nn.Embedding(NUM_VALUES + 1, dim)  # + the blank of the query positions
        self.blocks = nn.ModuleList(Block(attention(), dim) for _ in range(args.layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_VALUES)

    def forward(self, key_ids, val_ids):
        x = self.key_emb(key_ids) + self.val_emb(val_ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def loss(self, batch):
        key_ids, val_ids, targets = batch
        logits = self(key_ids, val_ids)
        # loss (and recall accuracy) over the query positions only, in float32
        asked = targets >= 0
        logits, targets = logits[asked].float(), targets[asked]
        return F.cross_entropy(logits, targets), (logits.argmax(-1) == targets).float().mean()


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
def train(model, args, device, label, *, seq_len, batch, steps, lr, data_seed):
    """``steps`` AdamW steps on batches drawn from generator ``data_seed`` (so two models given the
    same seed see the same batches in the same order). Returns per-step train losses, {step: eval
    loss on a held-out batch}, per-step wall seconds and the last eval's recall accuracy."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)  # a short linear warm-up, then a constant rate
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    # batches are drawn on the device itself (drawing them on the host costs more than a step here)
    gen = torch.Generator(device).manual_seed(data_seed)
    # the held-out batch: another seed, twice the batch, never trained on
    eval_batch = make_batch(torch.Generator(device).manual_seed(data_seed + 1000), 2 * batch, seq_len, args.num_keys)
    eval_every = args.eval_every or max(1, steps // 30)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    losses, evals, seconds, acc = [], {}, [], float("nan")

    def evaluate(step):
        nonlocal acc
        model.eval()  # PQ: eval calls neither refresh the codebook nor count as training steps
        with torch.no_grad():
            e, a = model.loss(eval_batch)
        evals[step], acc = e.item(), a.item()
        if args.verbose:
            last = f"  (last train loss {losses[-1]:.4f})" if losses else ""
            print(f"  {label:9s} step {step:4d}  held-out loss {evals[step]:.4f}  acc {acc:.3f}{last}")

    # step s: the model after s updates (the train loss of step s is measured before update s, the
    # held-out loss too), so both curves share one x axis; the last held-out point is after all updates
    for step in range(steps):
        data = make_batch(gen, batch, seq_len, args.num_keys)
        if step % eval_every == 0:
            evaluate(step)
        sync()
        t0 = time.perf_counter()
        model.train()
        loss, _ = model.loss(data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())  # waits for the step: the time below is the step's wall time
        seconds.append(time.perf_counter() - t0)
    evaluate(steps)
    return losses, evals, seconds, acc


# ----------------------------------------------------------------------------------------------
# outputs: CSV and a hand-made SVG chart
# ----------------------------------------------------------------------------------------------
def write_csv(path, dense, sparse):
    """One row per step: both train losses, both held-out losses where measured; a last row (step =
    steps, no train loss) holds the held-out losses after the final update."""
    def cell(values, s):
        return f"{values[s]:.6f}" if s in values else ""

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "dense_loss", "pq_sparse_loss", "dense_eval_loss", "pq_sparse_eval_loss"])
        train = [dict(enumerate(r[0])) for r in (dense, sparse)]
        for s in range(len(dense[0]) + 1):
            w.writerow([s] + [cell(t, s) for t in train] + [cell(r[1], s) for r in (dense, sparse)])


class Curve(NamedTuple):
    label: str | None  # None: a faint curve (raw data), not in the legend
    colour: str
    data: list  # [(x, y), ...]
    dash: str | None = None
    markers: bool = False


def smooth(values, window):
    """Centred moving average (shorter windows at the ends)."""
    h = window // 2
    return [statistics.fmean(values[max(0, i - h):i + h + 1]) for i in range(len(values))]


def nice_ticks(lo, hi, n=6):
    """About n round tick values (1, 2, 5 x 10^k apart) covering [lo, hi]."""
    if not hi > lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = [first + i * step for i in range(math.ceil((hi - first) / step - 1e-9) + 1)]
    return ticks, step


def log_ticks(lo, hi):
    """A log axis of whole decades covering [lo, hi] (lo > 0) and its ticks: the decades, plus 2 and 5
    times each when the axis spans fewer than three decades."""
    d0 = math.floor(math.log10(lo))
    d1 = max(d0 + 1, math.ceil(math.log10(hi)))
    mults = (1,) if d1 - d0 >= 3 else (1, 2, 5)
    ticks = [m * 10.0 ** d for d in range(d0, d1 + 1) for m in mults if m == 1 or d < d1]
    return 10.0 ** d0, 10.0 ** d1, ticks


def fmt_tick(v, step):
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{v:.{decimals}f}"


def write_svg(path, series, title, subtitle, note="", xlabel="fine-tuning step",
              ylabel="cross-entropy loss (log scale)"):
    """A line chart with a log y axis (losses fall over orders of magnitude) of ``series``, a list of
    Curve. Curves without a label are drawn faint (raw data under a smoothed curve) and left out of
    the legend."""
    w, h = 860, 500
    left, right, top, bottom = 72, 24, 74, 58
    pw, ph = w - left - right, h - top - bottom
    pts = [(x, y) for c in series for x, y in c.data if math.isfinite(y)]
    xmax = max([x for x, _ in pts] + [1])
    positive = [y for _, y in pts if y > 0] or [1.0]
    xt, xs = nice_ticks(0, xmax)
    ylo, yhi, yt = log_ticks(min(positive), max(positive))
    x1 = xt[-1]

    def px(x):
        return left + pw * x / x1

    def py(y):
        frac = (math.log10(max(y, ylo)) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo))
        return top + ph * (1 - frac)

    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
            f'font-family="sans-serif" font-size="12">'),
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{escape(title)}</text>',
           f'<text x="{w / 2}" y="43" text-anchor="middle" fill="#444">{escape(subtitle)}</text>',
           f'<text x="{w / 2}" y="59" text-anchor="middle" fill="#444">{escape(note)}</text>']
    # grid, ticks and tick labels
    for v in xt:
        out.append(f'<line x1="{px(v):.1f}" y1="{top}" x2="{px(v):.1f}" y2="{top + ph}" stroke="#e5e5e5"/>')
        out.append(f'<line x1="{px(v):.1f}" y1="{top + ph}" x2="{px(v):.1f}" y2="{top + ph + 5}" stroke="black"/>')
        out.append(f'<text x="{px(v):.1f}" y="{top + ph + 19}" text-anchor="middle">{fmt_tick(v, xs)}</text>')
    for v in yt:
        out.append(f'<line x1="{left}" y1="{py(v):.1f}" x2="{left + pw}" y2="{py(v):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<line x1="{left - 5}" y1="{py(v):.1f}" x2="{left}" y2="{py(v):.1f}" stroke="black"/>')
        out.append(f'<text x="{left - 8}" y="{py(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    # axes and their labels
    out.append(f'<polyline points="{left},{top} {left},{top + ph} {left + pw},{top + ph}" fill="none" '
               f'stroke="black" class="axes"/>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 14}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="18" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 18 {top + ph / 2})">{escape(ylabel)}</text>')
    # the curves (non-finite points are left out rather than drawn off the chart)
    for c in series:
        p = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in c.data if math.isfinite(y))
        style = ' stroke-width="1" stroke-opacity="0.3"' if c.label is None else ' stroke-width="1.8"'
        if c.dash:
            style += f' stroke-dasharray="{c.dash}"'
        out.append(f'<polyline class="series" points="{p}" fill="none" stroke="{c.colour}"{style}>'
                   f'<title>{escape(c.label or "raw")}</title></polyline>')
        if c.markers:
            out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{c.colour}"/>'
                    for x, y in c.data if math.isfinite(y)]
    # legend, top right inside the plot
    named = [c for c in series if c.label is not None]
    box_w = 44 + 7 * max((len(c.label) for c in named), default=0)  # about 7 px per character at 12 px
    lx, ly = left + pw - box_w, top + 12
    out.append(f'<rect x="{lx - 10}" y="{ly - 10}" width="{box_w}" height="{18 * len(named) + 4}" fill="white" '
               f'stroke="#bbb"/>')
    for i, c in enumerate(named):
        y = ly + 18 * i
        dash_attr = f' stroke-dasharray="{c.dash}"' if c.dash else ""
        out.append(f'<line x1="{lx}" y1="{y}" x2="{lx + 26}" y2="{y}" stroke="{c.colour}" stroke-width="2"'
                   f'{dash_attr}/>')
        out.append(f'<text x="{lx + 34}" y="{y + 4}">{escape(c.label)}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], help="default: bfloat16 on CUDA, else float32")
    p.add_argument("--steps", type=int, help="training steps per model (default: 300 on CUDA, else 60)")
    p.add_argument("--seq-len", type=int, help="L (default: 1024 on CUDA, else 128)")
    p.add_argument("--k-top", type=int, help="keys per query of the sparse model (default: L / 16)")
    p.add_argument("--dim", type=int, help="model width (default: 256 on CUDA, else 128)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, help="default: dim / 64 (head dim 64: the native kernels cover 64 and 128)")
    p.add_argument("--batch", type=int, help="sequences per step (default: 8 on CUDA, else 4)")
    p.add_argument("--refresh-every", type=int, default=50, help="PQ codebook refresh period (training steps)")
    p.add_argument("--centroids", type=int, default=256, help="PQ centroids per head and subspace (<= 256)")
    p.add_argument("--causal", action="store_true", help="causal attention in both models")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    p.add_argument("--pretrain-steps", type=int,
                   help="dense pre-training steps before the fork, 0: none (default: 300 on CUDA, else 150)")
    p.add_argument("--pretrain-len", type=int, help="pre-training sequence length (default: max(32, L / 8))")
    p.add_argument("--pretrain-lr", type=float, default=3e-3, help="pre-training learning rate")
    p.add_argument("--eval-every", type=int, help="steps between eval losses (default: steps / 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("docs", "finetune"), help="directory for the CSV and SVG")
    p.add_argument("--verbose", action="store_true", help="print every eval")
    args = p.parse_args(argv)
    on_cuda = torch.device(args.device).type == "cuda"
    args.dtype = args.dtype or ("bfloat16" if on_cuda else "float32")
    args.steps = args.steps or (300 if on_cuda else 60)
    args.seq_len = args.seq_len or (1024 if on_cuda else 128)
    args.k_top = args.k_top or max(1, args.seq_len // 16)
    args.dim = args.dim or (256 if on_cuda else 128)
    args.heads = args.heads or max(1, args.dim // 64)
    args.batch = args.batch or (8 if on_cuda else 4)
    args.pretrain_steps = (300 if on_cuda else 150) if args.pretrain_steps is None else args.pretrain_steps
    args.pretrain_len = args.pretrain_len or min(args.seq_len, max(32, args.seq_len // 8))
    args.num_keys = 4 * max(args.seq_len, args.pretrain_len)  # key vocabulary (keys are distinct in a sequence)
    if args.dim % args.heads:
        p.error(f"--dim {args.dim} is not a multiple of --heads {args.heads}")
    if (args.dim // args.heads) % 8:
        p.error(f"head dim {args.dim // args.heads} is not a multiple of the 8 PQ subspaces")
    if not 1 <= args.k_top <= args.seq_len:
        p.error(f"--k-top {args.k_top} is not in [1, --seq-len]")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype)
    head_dim = args.dim // args.heads
    if cuda:
        # the timings only mean something with the native kernels: say whether they are there
        info = attnx.info()
        if info.get("native_library") and not info.get("native_error"):
            print(f"attnx native library: {info['native_library']}")
        else:
            print(f"attnx native library not loaded ({info.get('native_error')}): PQ-sparse runs the reference")
        if head_dim not in (64, 128):
            print(f"note: head dim {head_dim}: the native kernels cover 64 and 128, this runs the reference")

    torch.manual_seed(args.seed)
    dense = TinyTransformer(args, sparse=False).to(device, dtype)
    n_params = sum(p.numel() for p in dense.parameters())
    dev_name = torch.cuda.get_device_name(device) if cuda else "CPU"
    dtype_name = {"bfloat16": "bf16", "float32": "fp32"}[args.dtype] + " weights"
    size = (f"{args.layers} layer{'s' * (args.layers != 1)} x dim {args.dim} ({args.heads} heads of {head_dim}), "
            f"{n_params / 1e6:.2f}M params")
    print(f"{size}, {'causal' if args.causal else 'non-causal'}; {dev_name}, {dtype_name}")

    # 1. pre-training (dense only) at a short length, where the recall task is quickly learnt
    if args.pretrain_steps:
        pre_batch = max(1, args.batch * args.seq_len // args.pretrain_len)  # as many tokens per step as later
        print(f"pre-training the dense model: L={args.pretrain_len}, batch {pre_batch}, {args.pretrain_steps} steps")
        t0 = time.perf_counter()
        _, evals, _, acc = train(dense, args, device, "pre-train", seq_len=args.pretrain_len, batch=pre_batch,
                                 steps=args.pretrain_steps, lr=args.pretrain_lr, data_seed=args.seed + 1)
        print(f"pre-trained in {time.perf_counter() - t0:.1f} s: held-out loss {evals[args.pretrain_steps]:.4f}, "
              f"recall accuracy {acc:.3f} at L={args.pretrain_len}")

    # 2. fine-tuning at the full length: the sparse twin starts from exactly the dense weights
    # (PQSparseSelfAttention's codebook is not in the state dict: the module fits it on its first call)
    sparse = TinyTransformer(args, sparse=True).to(device, dtype)
    sparse.load_state_dict(dense.state_dict())  # strict: every parameter has its twin
    print(f"fine-tuning both: L={args.seq_len}, batch {args.batch}, k_top={args.k_top}, {args.steps} steps")
    results = {}
    for label, model in (("dense", dense), ("pq-sparse", sparse)):
        t0 = time.perf_counter()
        results[label] = train(model, args, device, label, seq_len=args.seq_len, batch=args.batch, steps=args.steps,
                               lr=args.lr, data_seed=args.seed + 2)
        print(f"{label:9s} fine-tuned in {time.perf_counter() - t0:.1f} s")

    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "pq_sparse_finetune.csv")
    svg_path = os.path.join(args.out, "pq_sparse_finetune.svg")
    write_csv(csv_path, results["dense"], results["pq-sparse"])
    d_train, d_eval = results["dense"][:2]
    s_train, s_eval = results["pq-sparse"][:2]
    window = max(1, args.steps // 30) | 1  # odd: the moving average is centred
    blue, red = "#1f77b4", "#d62728"
    write_svg(svg_path, [
        Curve(None, blue, list(enumerate(d_train))),
        Curve(None, red, list(enumerate(s_train))),
        Curve(f"dense (SDPA), train, {window}-step mean", blue, list(enumerate(smooth(d_train, window)))),
        Curve(f"PQ-sparse (attnx), train, {window}-step mean", red, list(enumerate(smooth(s_train, window)))),
        Curve("dense, held-out batch", blue, sorted(d_eval.items()), dash="5,3", markers=True),
        Curve("PQ-sparse, held-out batch", red, sorted(s_eval.items()), dash="5,3", markers=True),
    ], title=f"Fine-tuning with dense vs PQ-sparse attention: L={args.seq_len}, k_top={args.k_top}",
        subtitle=f"associative recall; {size}, batch {args.batch}; {dev_name}, {dtype_name}",
        note=(f"both start from a dense model pre-trained {args.pretrain_steps} steps at L={args.pretrain_len}"
              if args.pretrain_steps else "both start from the same random init"))

    # summary: the mean of the last 10% of the training losses smooths out batch noise
    tail = max(1, args.steps // 10)
    summary = {}
    for label, (losses, evals, seconds, acc) in results.items():
        # the first step warms up kernels and allocators: left out of the time per step
        timed = seconds[1:] or seconds
        summary[label] = {"final_loss": statistics.fmean(losses[-tail:]), "start_eval_loss": evals[0],
                          "eval_loss": evals[args.steps],
                          "eval_acc": acc, "ms_per_step": 1e3 * statistics.median(timed),
                          "first_step_ms": 1e3 * seconds[0]}
    d, s = summary["dense"], summary["pq-sparse"]
    print(f"final train loss (mean of the last {tail} steps): dense {d['final_loss']:.4f}, "
          f"pq-sparse {s['final_loss']:.4f}, ratio sparse/dense {s['final_loss'] / d['final_loss']:.3f}")
    print(f"held-out loss before fine-tuning: dense {d['start_eval_loss']:.4f}, pq-sparse {s['start_eval_loss']:.4f}")
    print(f"held-out loss / recall accuracy after: dense {d['eval_loss']:.4f} / {d['eval_acc']:.3f}, "
          f"pq-sparse {s['eval_loss']:.4f} / {s['eval_acc']:.3f}")
    print(f"time per step (median, first step excluded): dense {d['ms_per_step']:.1f} ms, "
          f"pq-sparse {s['ms_per_step']:.1f} ms (first steps: {d['first_step_ms']:.0f} / {s['first_step_ms']:.0f} ms)")
    print(f"wrote {csv_path} and {svg_path}")
    summary["ratio"] = s["final_loss"] / d["final_loss"]
    summary["csv"], summary["svg"] = csv_path, svg_path
    return summary


if __name__ == "__main__":
    main()

"""mla: paged latent-cache decode against a plain-PyTorch gather + matmul (and FlashMLA / FlashInfer if installed)."""
from __future__ import annotations

import torch

import attnx

from .. import peers as P
from ..common import Case, Ctx, Impl, NotAvailable, randn
from ._helpers import _attnx_impl

# The cases. Memory-bound: s_q = 1 with 16-64 heads reads each cache byte once for few FLOPs
# (GB/s is the figure of merit, %ceil against the device-copy ceiling). Compute-bound: 128 heads x 2
# query tokens share every cache token (about 480 FLOP per cache byte): TFLOP/s, %ceil of the matmul
# ceiling. Skewed beside even: one long sequence among short ones, and the same number of tokens spread
# evenly over the same batch; with a good split-KV plan the two take about the same time.
MLA = {  # "grid": [(B, cache length, Hq, s_q)]; "compute": likewise; "skew": (long, n_short, short, Hq, s_q)
    "full": {"grid": [(b, n, hq, 1) for b in (64, 128) for n in (4096, 8192) for hq in (16, 32, 64)],
             "compute": [(64, 8192, 128, 2)],
             "skew": (32768, 127, 256, 64, 1)},
    "quick": {"grid": [(16, 1024, 16, 1), (16, 1024, 64, 1)],
              "compute": [(8, 1024, 128, 2)],
              "skew": (4096, 15, 256, 64, 1)},
    "cpu": {"grid": [(2, 256, 16, 1)], "compute": [], "skew": (512, 3, 64, 16, 1)},
    "cpu-quick": {"grid": [(2, 128, 16, 1)], "compute": [], "skew": (256, 3, 64, 16, 1)},
}
MLA_PAGE, MLA_DQK, MLA_DV, MLA_HK = 64, 576, 512, 1


def mla(ctx: Ctx) -> list:
    cfg = MLA[ctx.mode]
    cases = [_mla_case(ctx, [n] * b, hq, sq, name=f"B{b} cache {n} Hq{hq} s_q{sq}") for b, n, hq, sq in cfg["grid"]]
    cases += [_mla_case(ctx, [n] * b, hq, sq, name=f"B{b} cache {n} Hq{hq} s_q{sq} (compute-bound)", primary="flops")
              for b, n, hq, sq in cfg["compute"]]
    long_len, n_short, short, hq, sq = cfg["skew"]
    skewed, even = mla_skew_lengths(long_len, n_short, short)
    b, total = len(skewed), sum(skewed)
    lo, hi = min(even), max(even)
    spread = f"{b}x{lo}" if lo == hi else f"{b}x{lo}-{hi}"
    cases.append(_mla_case(ctx, skewed, hq, sq, name=f"B{b} skewed 1x{long_len} + {n_short}x{short} (T={total}) "
                           f"Hq{hq} s_q{sq}", note="same tokens as the next (even) case",
                           extra={"batch": "skewed"}))
    cases.append(_mla_case(ctx, even, hq, sq, name=f"B{b} even {spread} (T={total}) Hq{hq} s_q{sq}",
                           note="the skewed case's tokens, spread evenly",
                           extra={"batch": "even"}))
    return cases


def mla_skew_lengths(long_len: int, n_short: int, short: int) -> tuple:
    """(skewed, even): one sequence of long_len tokens beside n_short of ``short`` tokens, and the same
    total spread as evenly as integers allow over the same n_short + 1 sequences (the first
    ``total % B`` get one token more)."""
    skewed = [long_len] + [short] * n_short
    b, total = len(skewed), sum(skewed)
    even = [total // b + (1 if i < total % b else 0) for i in range(b)]
    return skewed, even


def mla_block_table(lens, device, generator=None):
    """(block_table int32 [B, max pages], cache_seqlens int32 [B]) for sequences of the given lengths
    over a cache of sum(pages) pages: every page used once, in random order; entries past a
    sequence's pages hold page 0."""
    pages = [-(-n // MLA_PAGE) for n in lens]
    max_pages = max(max(pages, default=0), 1)
    table = torch.zeros((len(lens), max_pages), dtype=torch.int32, device=device)
    used = torch.arange(max_pages)[None, :] < torch.tensor(pages, dtype=torch.long)[:, None]
    table[used.to(device)] = torch.randperm(sum(pages), device=device, generator=generator).to(torch.int32)
    return table, torch.tensor(lens, dtype=torch.int32, device=device)


def _mla_case(ctx, lens, hq, sq, *, name, primary="bytes", note="", extra=None):
    """attnx.mla_decode over a paged cache holding sequences of the given lengths (pages in random
    order; block-table entries past a sequence's pages hold page 0, which the gather peer reads and
    masks). Bytes count each used cache token once (the tail of a partial last page is not counted)
    plus q, out and lse; FLOPs 2 * (576 + 512) per (query row, key) pair."""
    b = len(lens)
    pages = [-(-n // MLA_PAGE) for n in lens]
    num_blocks, total = sum(pages), sum(lens)
    item = ctx.dtype.itemsize
    cache_bytes = total * MLA_HK * MLA_DQK * item
    io_bytes = b * sq * hq * (MLA_DQK * item + MLA_DV * item + 4)  # q in; out and float32 lse back
    check = sorted(set(range(min(4, b))) | set(range(max(0, b - 4), b)))  # first and last sequences

    def make_set(i):
        table, seqlens = mla_block_table(lens, ctx.device)
        s = {"q": randn((b, sq, hq, MLA_DQK), ctx),
             "kv_cache": randn((num_blocks, MLA_PAGE, MLA_HK, MLA_DQK), ctx),
             "block_table": table, "cache_seqlens": seqlens}
        s["metadata"] = attnx.mla_decode_metadata(seqlens, hq, MLA_HK, sq)  # once per step, untimed
        return s

    def run(s):
        return attnx.mla_decode(s["q"], s["kv_cache"], s["block_table"], s["cache_seqlens"], head_dim_v=MLA_DV,
                                metadata=s["metadata"])

    def kernel(s):  # as attnx.mla_decode decides
        native = attnx._native.covers("mla_decode", s["q"], s["kv_cache"], head_dim_v=MLA_DV)
        return "native" if native else "reference"

    def expected(s):
        return attnx.reference.mla_decode(s["q"][check], s["kv_cache"], s["block_table"][check],
                                          s["cache_seqlens"][check], head_dim_v=MLA_DV)[0]

    def impls():
        out = [_attnx_impl(ctx, run, kernel, output=lambda o: o[0]), P.torch_mla_peer(ctx, MLA_DV)]
        if ctx.cuda:
            out += _mla_optional_peers(ctx, lens, hq, sq)
        return out

    params = {"B": b, "cache_len": lens[0] if len(set(lens)) == 1 else None, "total_tokens": total,
              "max_len": max(lens), "Hq": hq, "Hk": MLA_HK, "s_q": sq, "page": MLA_PAGE, "d_qk": MLA_DQK,
              "d_v": MLA_DV, "cache_bytes": cache_bytes, "io_bytes": io_bytes, "primary": primary,
              "check_sequences": check}
    if len(set(lens)) > 1:
        params["lengths"] = list(lens)
    params.update(extra or {})
    what = ("GB/s: used cache bytes once + q, out, lse" if primary == "bytes"
            else "%ceil: of the matmul ceiling")
    return Case(family="mla", name=name, make_set=make_set, impls=impls,
                set_bytes=num_blocks * MLA_PAGE * MLA_HK * MLA_DQK * item + io_bytes, expected=expected,
                subset=lambda o: o[check], flops=2.0 * hq * sq * total * (MLA_DQK + MLA_DV),
                nbytes=cache_bytes + io_bytes, dtype=ctx.dtype, params=params,
                note=f"{note}; {what}" if note else what)


def _mla_optional_peers(ctx, lens, hq, sq) -> list:
    """FlashMLA and FlashInfer's MLA wrapper, each only where its package is installed (not dependencies)."""
    import importlib.util
    out = []
    if importlib.util.find_spec("flash_mla") is not None:
        out.append(_flash_mla_peer(ctx, hq, sq))
    if importlib.util.find_spec("flashinfer") is not None:
        out.append(_flashinfer_mla_peer(ctx, lens, hq, sq))
    return out


def _import_setup(mod, key, what, load):
    """An Impl setup that imports an optional peer (mod[key] = load()), or marks it not available."""
    def setup(_):
        try:
            mod[key] = load()
        except Exception as e:  # noqa: BLE001
            raise NotAvailable(f"{what} does not import ({type(e).__name__}: {e})")
    return setup


def _flash_mla_peer(ctx, hq, sq) -> Impl:
    """deepseek-ai/FlashMLA's flash_mla_with_kvcache on the set's own cache and block table. Its plan
    (get_mla_metadata; newer versions build it lazily on the first call) is made in prepare, untimed."""
    mod = {}
    setup = _import_setup(mod, "m", "flash_mla", lambda: __import__("flash_mla"))

    def run(a):
        return mod["m"].flash_mla_with_kvcache(a["q"], a["kv_cache"], a["block_table"], a["cache_seqlens"], MLA_DV,
                                               a["sched"], a["splits"], causal=False)

    def prepare(s):
        sched, splits = mod["m"].get_mla_metadata(s["cache_seqlens"], sq * hq // MLA_HK, MLA_HK)
        a = dict(s, sched=sched, splits=splits)
        run(a)  # the first call plans (newer FlashMLA) and warms up, outside the timed region
        return a

    return Impl(name="FlashMLA", run=run, prepare=prepare, setup=setup, output=lambda o: o[0], kernel="peer")


def _flashinfer_mla_peer(ctx, lens, hq, sq) -> Impl:
    """flashinfer.mla.BatchMLAPagedAttentionWrapper: planned per input set in prepare (untimed), on
    contiguous copies of the cache's latent (512) and rope (64) columns, as FlashInfer lays them out."""
    b = len(lens)
    mod = {}

    def load():
        from flashinfer.mla import BatchMLAPagedAttentionWrapper
        return BatchMLAPagedAttentionWrapper

    setup = _import_setup(mod, "wrapper", "flashinfer.mla", load)

    def prepare(s):
        dev, kv, seqlens = ctx.device, s["kv_cache"], s["cache_seqlens"]
        pages = (seqlens + MLA_PAGE - 1) // MLA_PAGE
        kv_indptr = torch.zeros(b + 1, dtype=torch.int32, device=dev)
        kv_indptr[1:] = torch.cumsum(pages, 0)
        used = torch.arange(s["block_table"].shape[1], device=dev)[None, :] < pages[:, None]
        kv_indices = s["block_table"][used].contiguous()
        qo_indptr = torch.arange(b + 1, dtype=torch.int32, device=dev) * sq
        w = mod["wrapper"](torch.empty(128 << 20, dtype=torch.uint8, device=dev))
        w.plan(qo_indptr, kv_indptr, kv_indices, seqlens, hq, MLA_DV, MLA_DQK - MLA_DV, MLA_PAGE, False,
               MLA_DQK ** -0.5, s["q"].dtype, kv.dtype)
        q = s["q"].reshape(b * sq, hq, MLA_DQK)
        return {"w": w, "q_nope": q[..., :MLA_DV].contiguous(), "q_pe": q[..., MLA_DV:].contiguous(),
                "ckv": kv[:, :, 0, :MLA_DV].contiguous(), "kpe": kv[:, :, 0, MLA_DV:].contiguous()}

    def run(a):
        return a["w"].run(a["q_nope"], a["q_pe"], a["ckv"], a["kpe"])

    return Impl(name="FlashInfer MLA", run=run, prepare=prepare, setup=setup,
                output=lambda o: o.reshape(b, sq, hq, MLA_DV), kernel="peer")

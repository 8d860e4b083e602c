"""Peers measured beside attnx: PyTorch SDPA (flash / cuDNN backends; padded with a key-padding mask
beside packed varlen), varlen_attn, flex_attention (compiled, with block masks equivalent to the
neighbourhood / block-sparse / document patterns) and a plain-PyTorch MLA decode; for the
backward families, the backward of SDPA (flash / cuDNN) and of varlen_attn.

Each builder returns an :class:`Impl`; a peer that cannot run here raises NotAvailable (from its
``setup``, ``prepare`` or ``run``), which the runner prints as "n/a: reason".
"""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Callable, Optional, Sequence

import torch

from .common import Ctx, Impl, NotAvailable

# ----------------------------------------------------------------------------------------------
# SDPA
# ----------------------------------------------------------------------------------------------
SDPA_BACKENDS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-cudnn": "CUDNN_ATTENTION"}


def _bhld(x: torch.Tensor) -> torch.Tensor:
    """[B, L, H, D] -> contiguous [B, H, L, D] (made once, outside the timed region)."""
    return x.transpose(1, 2).contiguous()


def _sdpa_backend(name: str):
    """The SDPBackend that peer ``name`` ("sdpa-flash", "sdpa-cudnn") forces."""
    try:
        from torch.nn.attention import SDPBackend
        return getattr(SDPBackend, SDPA_BACKENDS[name])
    except (ImportError, AttributeError) as e:
        raise NotAvailable(f"torch {torch.__version__} has no SDPBackend.{SDPA_BACKENDS[name]} ({e})")


def _sdpa_call(name: str, backend, q, k, v, causal: bool):
    """SDPA on [B, H, L, D] with ``backend`` forced (None: the default dispatch)."""
    if backend is None:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    from torch.nn.attention import sdpa_kernel
    try:
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    except RuntimeError as e:
        if "No available kernel" in str(e):
            raise NotAvailable(f"{name} does not support this config")
        raise


class _Backend:
    """The SDPBackend peer ``name`` forces, resolved in the peer's setup (so an unavailable backend
    reads as n/a); None for "sdpa" (CPU: the default dispatch)."""

    def __init__(self, name: str):
        self.name, self.value = name, None

    def setup(self, _):
        if self.name != "sdpa":
            self.value = _sdpa_backend(self.name)


def sdpa_peer(ctx: Ctx, name: str, *, causal: bool, keys=("q", "k", "v"), flops=None, note="",
              check: bool = True) -> Impl:
    """SDPA on [B, H, L, D] copies of the set's q/k/v; ``name`` picks the backend (CPU: the default one)."""
    qn, kn, vn = keys
    backend = _Backend(name)

    def prepare(s):
        return _bhld(s[qn]), _bhld(s[kn]), _bhld(s[vn])

    def run(a):
        q, k, v = a
        return _sdpa_call(name, backend.value, q, k, v, causal)

    return Impl(name=name, run=run, prepare=prepare, output=lambda o: o.transpose(1, 2), setup=backend.setup,
                kernel="peer", flops=flops, note=note, check=check)


def sdpa_peers(ctx: Ctx, *, causal: bool, keys=("q", "k", "v"), flops=None, note="", check: bool = True) -> list:
    names = list(SDPA_BACKENDS) if ctx.cuda else ["sdpa"]
    return [sdpa_peer(ctx, n, causal=causal, keys=keys, flops=flops, note=note, check=check) for n in names]


# ----------------------------------------------------------------------------------------------
# backward peers: the forward runs once in ``prepare`` (untimed, graph kept); the timed call is
# torch.autograd.grad(out, (q, k, v), dout, retain_graph=True), i.e. the peer's backward alone
# ----------------------------------------------------------------------------------------------
def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().requires_grad_(True)


def _grad_inputs(out: torch.Tensor, inputs: tuple, dout: torch.Tensor) -> dict:
    """What a backward peer's run needs; dout gets out's memory layout (as autograd would hand it)."""
    return {"out": out, "inputs": inputs, "dout": torch.empty_like(out).copy_(dout)}


def _grad_run(a: dict):
    return torch.autograd.grad(a["out"], a["inputs"], a["dout"], retain_graph=True)


def sdpa_bwd_peer(ctx: Ctx, name: str, *, causal: bool, keys=("q", "k", "v", "dout"), note="") -> Impl:
    """The backward of SDPA (``name`` picks the backend of the forward, which fixes the backward's;
    CPU: the default one) on [B, H, L, D] copies of the set's q/k/v (leaves requiring grad) with
    the set's dout [B, L, H, D]. Returns (dq, dk, dv) in [B, L, H, D]."""
    qn, kn, vn, don = keys
    backend = _Backend(name)

    def prepare(s):
        q, k, v = (_leaf(_bhld(s[n])) for n in (qn, kn, vn))
        with torch.enable_grad():
            out = _sdpa_call(name, backend.value, q, k, v, causal)
        return _grad_inputs(out, (q, k, v), s[don].transpose(1, 2))

    return Impl(name=name, run=_grad_run, prepare=prepare, output=lambda g: tuple(x.transpose(1, 2) for x in g),
                setup=backend.setup, kernel="peer", note=note)


def sdpa_bwd_peers(ctx: Ctx, *, causal: bool, keys=("q", "k", "v", "dout"), note="") -> list:
    names = list(SDPA_BACKENDS) if ctx.cuda else ["sdpa"]
    return [sdpa_bwd_peer(ctx, n, causal=causal, keys=keys, note=note) for n in names]


def sdpa_train_peers(ctx: Ctx, *, causal: bool, keys=("q", "k", "v", "dout"), flops=None, note="") -> list:
    """Forward + backward of SDPA in one timed call (a training step's attention): the forward on
    [B, H, L, D] leaves, then torch.autograd.grad with the set's dout. Returns (dq, dk, dv) in
    [B, L, H, D]."""
    qn, kn, vn, don = keys

    def make(name):
        backend = _Backend(name)

        def prepare(s):
            return {"inputs": tuple(_leaf(_bhld(s[n])) for n in (qn, kn, vn)), "dout": _bhld(s[don])}

        def run(a):
            with torch.enable_grad():
                out = _sdpa_call(name, backend.value, *a["inputs"], causal)
                return torch.autograd.grad(out, a["inputs"], a["dout"])

        return Impl(name=name, run=run, prepare=prepare, output=lambda g: tuple(x.transpose(1, 2) for x in g),
                    setup=backend.setup, kernel="peer", flops=flops, note=note, check=False)

    return [make(n) for n in (list(SDPA_BACKENDS) if ctx.cuda else ["sdpa"])]


# ----------------------------------------------------------------------------------------------
# torch.nn.attention.varlen.varlen_attn (newer torch only; its signature has changed over versions)
# ----------------------------------------------------------------------------------------------
def _varlen_attn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception as e:  # noqa: BLE001
        raise NotAvailable(f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn "
                           f"({type(e).__name__})")
    return varlen_attn


def _varlen_attn_setup(ctx: Ctx, causal: bool, state: dict):
    """state["fn"], state["kw"]: varlen_attn and the keyword arguments that make it causal."""
    if not ctx.cuda:
        raise NotAvailable("varlen_attn needs CUDA")
    fn = _varlen_attn()
    params = inspect.signature(fn).parameters
    kw = {}
    if causal:
        if "is_causal" in params:
            kw["is_causal"] = True
        elif "window_size" in params:
            kw["window_size"] = (-1, 0)
        elif "causal" in params:
            kw["causal"] = True
        else:
            raise NotAvailable(f"varlen_attn{inspect.signature(fn)} has no causal option")
    state["fn"], state["kw"] = fn, kw


def _varlen_attn_call(state: dict, s: dict, q, k, v):
    out = state["fn"](q, k, v, s["cu"], s["cu"], s["max_len"], s["max_len"], **state["kw"])
    return out[0] if isinstance(out, (tuple, list)) else out


def varlen_attn_peer(ctx: Ctx, *, causal: bool) -> Impl:
    state = {}

    def setup(_):
        _varlen_attn_setup(ctx, causal, state)

    def run(s):
        return _varlen_attn_call(state, s, s["q"], s["k"], s["v"])

    return Impl(name="varlen_attn", run=run, setup=setup, kernel="peer")


def varlen_attn_bwd_peer(ctx: Ctx, *, causal: bool) -> Impl:
    """The backward of varlen_attn on the set's packed q/k/v (leaves requiring grad) with its dout."""
    state = {}

    def setup(_):
        _varlen_attn_setup(ctx, causal, state)

    def prepare(s):
        q, k, v = (_leaf(s[n]) for n in "qkv")
        with torch.enable_grad():
            out = _varlen_attn_call(state, s, q, k, v)
        return _grad_inputs(out, (q, k, v), s["dout"])

    return Impl(name="varlen_attn", run=_grad_run, prepare=prepare, setup=setup, kernel="peer")


def padded_sdpa_peer(ctx: Ctx, lens: Sequence[int], seqlen: int, name: str = "sdpa (padded, key mask)",
                     note: str = "") -> Impl:
    """The padded baseline of a packed varlen case: SDPA (default dispatch) on [B, H, seqlen, D] with a
    boolean key-padding mask [B, 1, 1, seqlen].

    Only the padded call is timed: the padding of the set's packed q/k/v [T, H, D] (sequence b is
    rows cu[b]:cu[b+1]) and the mask are built in ``prepare``; the output is packed back to [T, H, D]
    (untimed) for the check. Padded query rows attend to the real keys of their sentence (their
    output is discarded), so no row is fully masked.
    """
    b = len(lens)
    state = {}

    def rows():  # flat [B * seqlen] positions of the real tokens, and the key-padding mask
        if not state:
            lens_t = torch.tensor(list(lens), device=ctx.device)
            pos = torch.arange(seqlen, device=ctx.device)
            keep = pos[None, :] < lens_t[:, None]  # [B, seqlen]
            state["idx"] = torch.nonzero(keep.flatten(), as_tuple=False).flatten()
            state["mask"] = keep[:, None, None, :]
        return state["idx"], state["mask"]

    def pad(x):  # [T, H, D] -> contiguous [B, H, seqlen, D], zeros where no token is
        idx, _ = rows()
        out = x.new_zeros((b * seqlen, *x.shape[1:]))
        out[idx] = x
        return out.view(b, seqlen, *x.shape[1:]).transpose(1, 2).contiguous()

    def prepare(s):
        return pad(s["q"]), pad(s["k"]), pad(s["v"]), rows()[1]

    def run(a):
        q, k, v, mask = a
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def output(o):  # [B, H, seqlen, D] -> packed [T, H, D]
        return o.transpose(1, 2).reshape(b * seqlen, o.shape[1], o.shape[3])[rows()[0]]

    return Impl(name=name, run=run, prepare=prepare, output=output, kernel="peer", note=note)


# ----------------------------------------------------------------------------------------------
# flex_attention
# ----------------------------------------------------------------------------------------------
_FLEX: dict = {}


def _flex_fn(ctx: Ctx):
    """flex_attention compiled once (GPU); eager on the CPU (it materialises the scores: small sizes only)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except Exception as e:  # noqa: BLE001
        raise NotAvailable(f"no flex_attention in torch {torch.__version__} ({type(e).__name__})")
    if not ctx.cuda:
        return flex_attention
    if "compiled" not in _FLEX:
        import torch._dynamo as dynamo
        # many shapes and masks in one process: raise the recompile limits so dynamo never falls
        # back to eager flex (which would materialise L x L scores)
        for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(dynamo.config, name):
                try:
                    setattr(dynamo.config, name, max(256, int(getattr(dynamo.config, name))))
                except Exception:  # noqa: BLE001
                    pass
        _FLEX["compiled"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["compiled"]


def block_mask(ctx: Ctx, mask_mod: Callable, q_len: int, kv_len: int, block: int = 128):
    """create_block_mask over [q_len, kv_len]; large ones are built compiled (``_compile=True``), which
    avoids materialising q_len x kv_len intermediates of the mask_mod (GBs at L = 64k)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except Exception as e:  # noqa: BLE001
        raise NotAvailable(f"no create_block_mask in torch {torch.__version__} ({type(e).__name__})")
    if ctx.cuda and q_len * kv_len > (1 << 26):
        try:
            with warnings.catch_warnings():  # newer torch deprecates _compile in favour of torch.compile(...)
                warnings.simplefilter("ignore", DeprecationWarning)
                return create_block_mask(mask_mod, None, None, q_len, kv_len, device=ctx.device, BLOCK_SIZE=block,
                                         _compile=True)
        except TypeError:  # no _compile argument: compile the builder instead
            return torch.compile(create_block_mask)(mask_mod, None, None, q_len, kv_len, device=ctx.device,
                                                    BLOCK_SIZE=block)
    return create_block_mask(mask_mod, None, None, q_len, kv_len, device=ctx.device, BLOCK_SIZE=block)


def flex_peer(ctx: Ctx, make_mask_mod: Callable, *, tokens: int, spatial: Optional[Sequence[int]] = None,
              block: int = 128, packed: bool = False, padded_tokens: Optional[int] = None, name: str = "flex",
              note: str = "", backward: bool = False) -> Impl:
    """flex_attention with ``create_block_mask(make_mask_mod(first_set))``.

    Base sets hold q/k/v as [B, *spatial, H, D] (or packed [T, H, D] when ``packed``); the peer
    runs on contiguous [B, H, tokens, D] copies and its output is put back in that layout.
    ``padded_tokens`` (packed only): zero tokens appended up to that length (the mask must keep
    them apart), so flex sees a multiple of its block size. ``backward``: the timed call is the
    backward of flex (forward once per set, untimed) with the set's ``dout``; it returns
    (dq, dk, dv) in the set's layout.
    """
    state = {}
    n_flex = padded_tokens or tokens

    def setup(s):
        if backward and not ctx.cuda:
            raise NotAvailable("flex_attention has no backward on the CPU")
        state["fn"] = _flex_fn(ctx)
        state["mask"] = block_mask(ctx, make_mask_mod(s), n_flex, n_flex, block)
        if ctx.cuda:
            torch._dynamo.reset()  # a fresh compile per case (new shapes/masks) under the raised limits

    def flat(x):
        if packed:  # [T, H, D] -> [1, H, T', D]
            x = x.transpose(0, 1).unsqueeze(0)
            if n_flex > tokens:
                x = torch.nn.functional.pad(x, (0, 0, 0, n_flex - tokens))
            return x.contiguous()
        return x.reshape(x.shape[0], tokens, *x.shape[-2:]).transpose(1, 2).contiguous()

    def prepare(s):
        if backward:
            q, k, v = (_leaf(flat(s[n])) for n in "qkv")
            with torch.enable_grad():
                out = state["fn"](q, k, v, block_mask=state["mask"])
            return _grad_inputs(out, (q, k, v), flat(s["dout"]))
        return flat(s["q"]), flat(s["k"]), flat(s["v"])

    def run(a):
        if backward:
            return _grad_run(a)
        q, k, v = a
        if ctx.cuda:
            return state["fn"](q, k, v, block_mask=state["mask"])
        with warnings.catch_warnings():  # eager flex warns that it is unfused: known, small sizes only
            warnings.simplefilter("ignore", UserWarning)
            return state["fn"](q, k, v, block_mask=state["mask"])

    def output(o):
        o = o.transpose(1, 2)  # [B, tokens, H, D]
        if packed:
            return o[0, :tokens]
        return o.reshape(o.shape[0], *spatial, *o.shape[-2:]) if spatial else o

    return Impl(name=name if ctx.cuda else f"{name} (eager)", run=run, prepare=prepare, setup=setup,
                output=(lambda g: tuple(output(x) for x in g)) if backward else output, kernel="peer", note=note)


def _pick(a, b, both, clamp: str, plain):
    """min/max of ints and/or index tensors (torch.minimum/maximum and clamp keep mask_mod traceable by flex)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return both(a, b)
    if isinstance(a, torch.Tensor):
        return a.clamp(**{clamp: b})
    if isinstance(b, torch.Tensor):
        return b.clamp(**{clamp: a})
    return plain(a, b)


def _where_min(a, b):
    return _pick(a, b, torch.minimum, "max", min)


def _where_max(a, b):
    return _pick(a, b, torch.maximum, "min", max)


def na_mask_mod(spatial: Sequence[int], kernel_size: Sequence[int], dilation: Sequence[int],
                stride: Sequence[int], causal: Sequence[bool]) -> Callable:
    """mask_mod(b, h, q_idx, kv_idx) of neighbourhood attention over row-major flattened tokens.

    Per axis (DESIGN.md / NATTEN): within the dilation group r = p % d, group coordinate i = p // d
    on a group of length n_r; non-causal: leader = min(i // s * s + s // 2, n_r - 1), keys
    clamp(leader - k // 2, 0, n_r - k) .. + k - 1; causal: leader = min(i // s * s + s - 1, n_r - 1),
    keys max(leader - k + 1, 0) .. i. A key is visible when it is on every axis.
    """
    rank = len(spatial)
    strides = [math.prod(spatial[a + 1:]) for a in range(rank)]

    def axis_ok(qc, kc, n, k, d, s, c):
        if d == 1:
            r, i, j, n_r = None, qc, kc, n
        else:
            r, i, j = qc % d, qc // d, kc // d
            n_r = (n - r + d - 1) // d
        if c:
            leader = _where_min((i // s) * s + (s - 1), n_r - 1)
            lo = _where_max(leader - (k - 1), 0)
            hi = i
        else:
            leader = _where_min((i // s) * s + s // 2, n_r - 1)
            lo = _where_min(_where_max(leader - k // 2, 0), n_r - k)
            hi = lo + (k - 1)
        ok = (j >= lo) & (j <= hi)
        if d != 1:
            ok = ok & (kc % d == r)
        return ok

    def mask_mod(b, h, q_idx, kv_idx):
        ok = None
        for a in range(rank):
            qc = (q_idx // strides[a]) % spatial[a] if rank > 1 else q_idx
            kc = (kv_idx // strides[a]) % spatial[a] if rank > 1 else kv_idx
            o = axis_ok(qc, kc, spatial[a], kernel_size[a], dilation[a], stride[a], bool(causal[a]))
            ok = o if ok is None else ok & o
        return ok

    return mask_mod


def document_mask_mod(doc_ids: torch.Tensor, causal: bool) -> Callable:
    """Packed sequences: a query sees the keys of its own sequence (and, causal, not later ones)."""
    def mask_mod(b, h, q_idx, kv_idx):
        same = doc_ids[q_idx] == doc_ids[kv_idx]
        return (same & (q_idx >= kv_idx)) if causal else same
    return mask_mod


def tile_mask_mod(allowed_flat: torch.Tensor, num_kv_tiles: int, q_block: int, kv_block: int) -> Callable:
    """Block-sparse: query tile t sees every key of KV tile j iff allowed[t * num_kv_tiles + j]."""
    def mask_mod(b, h, q_idx, kv_idx):
        return allowed_flat[(q_idx // q_block) * num_kv_tiles + kv_idx // kv_block]
    return mask_mod


# ----------------------------------------------------------------------------------------------
# plain-PyTorch MLA decode
# ----------------------------------------------------------------------------------------------
def torch_mla_decode(q, kv_cache, block_table, cache_seqlens, head_dim_v: int, scale: float):
    """Gather the pages, then matmul - softmax (fp32) - matmul. q [B, s_q, Hq, Dqk] -> [B, s_q, Hq, Dv]."""
    b, sq, hq, d = q.shape
    _, page, hk, _ = kv_cache.shape
    g = hq // hk
    kv = kv_cache[block_table.long()]  # [B, P, page, Hk, D]
    n = kv.shape[1] * page
    kv = kv.reshape(b, n, hk, d).permute(0, 2, 1, 3)  # [B, Hk, N, D]
    qh = q.reshape(b, sq, hk, g, d).permute(0, 2, 1, 3, 4).reshape(b, hk, sq * g, d)
    s = torch.matmul(qh, kv.transpose(-1, -2))  # [B, Hk, sq*g, N]
    s = s.to(torch.promote_types(s.dtype, torch.float32)) * scale  # softmax in fp32 (fp64 stays fp64)
    pos = torch.arange(n, device=q.device)
    hidden = pos[None, :] >= cache_seqlens.long()[:, None]  # [B, N]
    s = s.masked_fill(hidden[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1).to(q.dtype)
    o = torch.matmul(p, kv[..., :head_dim_v])  # [B, Hk, sq*g, Dv]
    return o.reshape(b, hk, sq, g, head_dim_v).permute(0, 2, 1, 3, 4).reshape(b, sq, hq, head_dim_v)


def torch_mla_peer(ctx: Ctx, head_dim_v: int) -> Impl:
    def run(s):
        return torch_mla_decode(s["q"], s["kv_cache"], s["block_table"], s["cache_seqlens"], head_dim_v,
                                s["q"].shape[-1] ** -0.5)
    return Impl(name="torch gather+matmul", run=run, kernel="peer")

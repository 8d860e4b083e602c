"""Dense attention, padding-free varlen attention and unpad/pad: ops and public API."""
from __future__ import annotations

import torch

from .. import _native
from .._checked_once import CheckedOnce, NativeLayouts
from ..reference import dense_varlen as ref
from ._registry import define, define_attention_like

FAMILY = "varlen"

attention_op, attention_backward_op = define_attention_like(
    "attention", "bool causal=False, float? scale=None",
    lambda q, k, v, causal, scale: ref.attention_fwd(q, k, v, causal, scale),
    lambda dout, dlse, q, k, v, out, lse, causal, scale: ref.attention_bwd(dout, dlse, q, k, v, causal, scale,
                                                                            out=out, lse=lse),
    family="dense")

varlen_op, varlen_backward_op = define_attention_like(
    "varlen_attention",
    "Tensor cu_seqlens_q, Tensor cu_seqlens_k, SymInt max_seqlen_q, SymInt max_seqlen_k, bool causal=False, "
    "int window_left=-1, int window_right=-1, float? scale=None",
    lambda q, k, v, cq, ck, mq, mk, causal, wl, wr, scale: ref.varlen_fwd(q, k, v, cq, ck, mq, mk, causal, (wl, wr), scale),
    lambda dout, dlse, q, k, v, out, lse, cq, ck, mq, mk, causal, wl, wr, scale: ref.varlen_bwd(
        dout, dlse, q, k, v, cq, ck, causal, (wl, wr), scale, out=out, lse=lse),
    family=FAMILY)


def _unpad_fake(x, mask):
    n = torch.library.get_ctx().new_dynamic_size()
    return (x.new_empty((n, *x.shape[2:])), mask.new_empty((n,), dtype=torch.int64),
            mask.new_empty((mask.shape[0] + 1,), dtype=torch.int32), torch.empty((), dtype=torch.int64))


def _unpad_impl(x, mask):
    ref.check_unpad(x, mask)
    return ref.unpad_fwd(x, mask)


unpad_op = define("unpad", "(Tensor x, Tensor mask) -> (Tensor x_packed, Tensor indices, Tensor cu_seqlens, Tensor max_seqlen)",
                  _unpad_impl, fake=_unpad_fake, family=FAMILY)
pad_op = define("pad", "(Tensor x_packed, Tensor indices, SymInt batch, SymInt seqlen) -> Tensor",
                lambda x, idx, b, l: ref.pad_fwd(x, idx, b, l),
                fake=lambda x, idx, b, l: x.new_empty((b, l, *x.shape[1:])), family=FAMILY)


def _unpad_setup(ctx, inputs, output):
    x, _ = inputs
    ctx.save_for_backward(output[1])
    ctx.shape = x.shape


def _unpad_backward(ctx, d_packed, *_):
    (indices,) = ctx.saved_tensors
    return pad_op(d_packed, indices, ctx.shape[0], ctx.shape[1]), None


def _pad_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _pad_backward(ctx, dout):
    (indices,) = ctx.saved_tensors
    return dout.reshape(-1, *dout.shape[2:]).index_select(0, indices.long()), None, None, None


torch.library.register_autograd("attnx::unpad", _unpad_backward, setup_context=_unpad_setup)
torch.library.register_autograd("attnx::pad", _pad_backward, setup_context=_pad_setup)


def attention(q, k, v, *, causal=False, scale=None, return_lse=False):
    """Dense attention (flash-attn semantics). q [B, Lq, Hq, D], k [B, Lk, Hk, D], v [B, Lk, Hk, Dv].

    ``causal`` is bottom-right aligned (query i sees keys j <= i + Lk - Lq); GQA/MQA when
    Hq % Hk == 0; ``scale`` defaults to D ** -0.5. Returns out [B, Lq, Hq, Dv], and with
    ``return_lse`` also lse [B, Lq, Hq] (float32, natural log). The exact definition is
    :func:`attnx.reference.attention`.
    """
    ref.check_attention(q, k, v)
    if _native.use_reference("attention", q, k, v):
        out, lse = ref._AttentionRef.apply(q, k, v, bool(causal), scale)
    else:
        out, lse = attention_op(q, k, v, bool(causal), scale)
    return (out, lse) if return_lse else out


_varlen_checked = CheckedOnce()


_varlen_layouts = NativeLayouts()


def _check_varlen_values_once(q, k, cu_q, cu_k, max_q, max_k):
    """Value checks of cu_seqlens (a small copy to the host, so a sync), once per pair of tensors.

    The kernel never reads or writes out of bounds whatever the values (it clamps every sequence
    to the packed tensors); this check turns malformed values into a clear error.
    """
    _varlen_checked((cu_q, cu_k), (q.shape[0], k.shape[0], int(max_q), int(max_k)),
                    lambda: ref.check_varlen_values(q, k, cu_q, cu_k, max_q, max_k))


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False,
                     window=(-1, -1), scale=None, return_lse=False):
    """Padding-free attention over packed sequences; see :func:`attnx.reference.varlen_attention`."""
    compiling = torch.compiler.is_compiling()
    sig = None if compiling else NativeLayouts.key(
        (q, k, v, cu_seqlens_q, cu_seqlens_k), max_seqlen_q, max_seqlen_k, window,
        int(torch.is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in (q, k, v))))  # backward?
    native = sig in _varlen_layouts
    if not native:
        ref.check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, window)
        native = not _native.use_reference("varlen_attention", q, k, v)
        if native:
            _varlen_layouts.add(sig)
    if not native:
        out, lse = ref._VarlenRef.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                        bool(causal), tuple(window), scale)
    else:
        if q.is_cuda and not compiling:
            _check_varlen_values_once(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        out, lse = varlen_op(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, bool(causal),
                             int(window[0]), int(window[1]), scale)
    return (out, lse) if return_lse else out


def unpad(x, mask):
    """Pack tokens: x [B, L, ...], mask bool [B, L] -> (x_packed, indices int64, cu_seqlens int32, max_seqlen int).

    On CUDA (sm_90) a native kernel moves the rows (any dtype, copied as bytes); it reads the packed
    row count back to the host once to allocate, as every unpad with data-dependent sizes must.
    """
    ref.check_unpad(x, mask)
    if _native.use_reference("unpad", x):
        return ref.unpad(x, mask)
    packed, indices, cu, max_seqlen = unpad_op(x, mask)
    return packed, indices, cu, int(max_seqlen)


_pad_checked = CheckedOnce()


def pad(x_packed, indices, batch, seqlen):
    """Inverse of :func:`unpad`: [T, ...] -> [batch, seqlen, ...], zeros where no token is.

    ``indices`` must be distinct positions in [0, batch * seqlen) (as :func:`unpad` returns them).
    The range is checked with one copy to the host per indices tensor (again after an in-place
    change); the native kernel itself never syncs and skips values out of range.
    """
    ref.check_pad(x_packed, indices, batch, seqlen)
    if _native.use_reference("pad", x_packed):
        return ref.pad(x_packed, indices, batch, seqlen)
    if x_packed.is_cuda and not torch.compiler.is_compiling():
        _pad_checked((indices,), int(batch) * int(seqlen), lambda: ref.check_pad_values(indices, batch, seqlen))
    return pad_op(x_packed, indices, batch, seqlen)

"""Loading the native library and deciding, per call, whether its kernels cover a config.

The library (libattnx_ops.so, LibTorch stable ABI) registers CUDA kernels for schemas defined in
attnx.ops and reports the kernel instances it was built with through `attnx::_native_instances`.
A CUDA call whose config is outside those instances runs the reference (attnx.info() says so);
CPU calls always run the reference.
"""
from __future__ import annotations

import functools
import glob
import os

import torch

LIB_NAME = "libattnx_ops.so"
_state = {"path": None, "error": None, "instances": frozenset()}


def _candidates():
    here = os.path.dirname(os.path.abspath(__file__))
    env = os.environ.get("ATTNX_NATIVE_LIB")
    if env:
        yield env
    yield os.path.join(here, LIB_NAME)
    yield from sorted(glob.glob(os.path.join(here, "libattnx_ops*.so")))


def load():
    if os.environ.get("ATTNX_DISABLE_NATIVE") == "1":
        _state["error"] = "disabled by ATTNX_DISABLE_NATIVE=1"
        return
    for path in _candidates():
        if os.path.exists(path):
            try:
                torch.ops.load_library(path)
                _has_cuda_kernel.clear()
                _state["path"] = path
                names = torch.ops.attnx._native_instances()
                _state["instances"] = frozenset(n for n in names.split("\n") if n)
            except Exception as e:  # a broken library must not break the package: the reference runs
                _state["error"] = f"{type(e).__name__}: {e}"
            return
    _state["error"] = "not built (pure-Python install: every op runs its reference)"


def instances() -> frozenset:
    return _state["instances"]


_has_cuda_kernel: dict = {}  # op -> bool, cleared when a library loads


def has_cuda_kernel(op: str) -> bool:
    hit = _has_cuda_kernel.get(op)
    if hit is None:
        hit = _has_cuda_kernel[op] = torch._C._dispatch_has_kernel_for_dispatch_key(f"attnx::{op}", "CUDA")
    return hit


_DTYPE_TAG = {torch.float16: "fp16", torch.bfloat16: "bf16"}


@functools.lru_cache(maxsize=None)
def _sm90_index(index: int) -> bool:
    return torch.cuda.get_device_capability(index) == (9, 0)


def _sm90(device) -> bool:
    return _sm90_index(device.index if device.index is not None else torch.cuda.current_device())


def aligned_16b(x) -> bool:
    """TMA needs a 16-byte aligned base and strides that are multiples of 16 bytes (8 elements)."""
    return x.data_ptr() % 16 == 0 and all(st % 8 == 0 for sz, st in zip(x.shape[:-1], x.stride()[:-1]) if sz > 1)


def block_sparse_tiles(head_dim: int) -> tuple:
    """(q_block, kv_block) of the native block-sparse forward: the dense kernel's tile shape."""
    return (192, 128) if head_dim == 64 else (128, 128)


def _built(family: str, q, k, v) -> bool:
    """The forward instance `{family}_fwd` for q's dtype and head dim, plus `{family}_bwd` when
    autograd will call the native backward (a grad-requiring input under grad mode)."""
    tag = _DTYPE_TAG.get(q.dtype)
    needed = [f"{family}_fwd_{tag}_hdim{q.shape[-1]}"]
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        needed.append(f"{family}_bwd_{tag}_hdim{q.shape[-1]}")
    return tag is not None and all(n in _state["instances"] for n in needed)


def covers(op: str, q, k=None, v=None, *, head_dim_v=None, tiles=None, dilation=None, topk=None) -> bool:
    """True if the native library has a kernel instance for this CUDA call."""
    if not q.is_cuda or not has_cuda_kernel(op):
        return False
    if op == "block_sparse_attention":  # q, k, v; the tiles must be the forward kernel's own
        d = q.shape[-1]
        return (_built("fmha", q, k, v) and _sm90(q.device) and v.shape[-1] == d and tiles is not None and tuple(tiles) == block_sparse_tiles(d)
                and all(aligned_16b(x) for x in (q, k, v)))
    if op == "neighborhood_attention":  # q, k, v [B, *spatial, H, D]; dilated axes: reference
        return (_built("na", q, k, v) and _sm90(q.device) and k.shape == v.shape and v.shape[-1] == q.shape[-1] and k.dtype == q.dtype == v.dtype
                and dilation is not None and all(d == 1 for d in dilation))
    if op == "mla_decode_metadata":
        return _sm90(q.device)
    if op == "mla_decode":  # q, kv_cache: DeepSeek head dims, 64-token pages, contiguous cache
        tag = _DTYPE_TAG.get(q.dtype)
        return (tag is not None and f"mla_decode_{tag}_hdim576" in _state["instances"] and _sm90(q.device)
                and q.shape[-1] == 576 and head_dim_v == 512 and k.shape[1] == 64 and k.dtype == q.dtype
                and k.is_contiguous() and k.data_ptr() % 16 == 0)
    if op == "pq_topk":  # q, k_codes, centroids; the selection buffer (k + 256 slots) fits shared memory
        if topk is None or k.dim() != 4 or v.dim() != 4:
            return False
        m, c, ds = k.shape[3], v.shape[2], v.shape[3]
        per_warp = (256 + m * 256) * 4 + max(4096, 8 << (topk + 255).bit_length())  # LUT, q, buffer of pow2 slots
        return (_sm90(q.device) and q.dtype in (torch.float16, torch.bfloat16, torch.float32) and m in (4, 8, 16)
                and v.dtype == torch.float32 and c <= 256 and m * ds == q.shape[-1] <= 256 and per_warp <= 227 * 1024)
    if op == "pq_encode":  # x, centroids [H, M, C, ds]
        return (_sm90(q.device) and q.dtype in (torch.float16, torch.bfloat16, torch.float32) and k.dim() == 4
                and k.dtype == torch.float32 and k.shape[3] in (2, 4, 8, 16, 32) and k.shape[2] <= 256)
    if op == "sparse_attention":  # gathers of 16-byte row pieces: the same alignment TMA needs
        return (_built("sparse", q, k, v) and v.shape[-1] == q.shape[-1] and _sm90(q.device)
                and all(aligned_16b(x) for x in (q, k, v)))
    if op in ("unpad", "pad"):  # plain CUDA row copies, built for sm_90a like every kernel
        return _sm90(q.device)
    if op in ("attention", "varlen_attention"):
        return (_built("fmha", q, k, v) and v.shape[-1] == q.shape[-1] and _sm90(q.device)
                and all(aligned_16b(x) for x in (q, k, v)))
    return True


def use_reference(op: str, q, k=None, v=None, **kw) -> bool:
    """A CUDA call the native kernels do not cover: run the reference directly."""
    return q.is_cuda and has_cuda_kernel(op) and not covers(op, q, k, v, **kw)


def info() -> dict:
    from .ops._registry import OPS
    ops = {}
    for name, family in sorted(OPS.items()):
        cuda = "native" if has_cuda_kernel(name) else "reference"
        if name in ("attention", "varlen_attention", "attention_backward", "varlen_attention_backward") \
                and cuda == "native":
            prefix = "fmha_bwd" if name.endswith("_backward") else "fmha_fwd"
            cuda = "native for: " + ", ".join(sorted(i for i in _state["instances"] if i.startswith(prefix))) \
                + " on sm_90; reference otherwise"
        elif name == "block_sparse_attention" and cuda == "native":
            cuda = ("native for: " + ", ".join(sorted(i for i in _state["instances"] if i.startswith("fmha_")))
                    + " with (q_block, kv_block) = (128, 128), (192, 128) at head dim 64, on sm_90 (backward: the"
                    " KV-tile-major kernel walking the transposed lists); other tiles: reference")
        elif name in ("neighborhood_attention", "neighborhood_attention_backward") and cuda == "native":
            prefix = "na_bwd" if name.endswith("_backward") else "na_fwd"
            cuda = ("native for: " + ", ".join(sorted(i for i in _state["instances"] if i.startswith(prefix)))
                    + " (any kernel_size, stride, is_causal; 1-D to 3-D) on sm_90; dilation > 1 through the"
                    " Python API: the same kernels with the dilation groups moved into the batch (one call per"
                    " combination of group lengths when an axis is not a multiple of its dilation)")
        elif name == "mla_decode" and cuda == "native":
            cuda = "native for: " + ", ".join(sorted(i for i in _state["instances"] if i.startswith("mla_decode"))) \
                + " (head dims 576/512, page 64, contiguous cache) on sm_90; reference otherwise"
        elif name in ("sparse_attention", "sparse_attention_backward") and cuda == "native":
            prefix = "sparse_bwd" if name.endswith("_backward") else "sparse_fwd"
            cuda = ("native for: " + ", ".join(sorted(i for i in _state["instances"] if i.startswith(prefix)))
                    + " (Dv = D) on sm_90; reference otherwise")
        elif name == "pq_topk" and cuda == "native":
            cuda = ("native (fused LUT scoring + histogram selection) for q fp16/bf16/fp32, M in {4, 8, 16}, C <= 256,"
                    " D <= 256, k + 256 selection slots in shared memory, on sm_90; reference otherwise")
        elif name == "pq_encode" and cuda == "native":
            cuda = "native for x fp16/bf16/fp32, D / M in {2, 4, 8, 16, 32}, C <= 256, on sm_90; reference otherwise"
        elif name == "mla_decode_metadata" and cuda == "native":
            cuda = "native (GPU planner) on sm_90; reference otherwise"
        ops[name] = {"family": family, "cpu": "reference", "cuda": cuda}
    return {
        "version": __import__("attnx").__version__,
        "torch": torch.__version__,
        "native_library": _state["path"],
        "native_error": _state["error"],
        "native_instances": sorted(_state["instances"]),
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "ops": ops,
    }

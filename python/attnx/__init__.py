"""attnx: Hopper attention kernels for PyTorch with exact pure-PyTorch references.

Public API (DESIGN.md): attention, varlen_attention, unpad, pad, neighborhood_attention,
na1d/na2d/na3d, block_sparse_attention, mla_decode_metadata, mla_decode, sparse_attention,
pq_sparse_attention, the modules attnx.pq, attnx.gna, attnx.nn and attnx.reference, and info().
Every op is also reachable as torch.ops.attnx.<name>. Multi-GPU versions (ring and all-to-all
context parallelism, split MLA decode) live in ``attnx.distributed`` (imported on its own, like
torch.distributed).
"""
__version__ = "0.1.0"

import torch as _torch

# The native library targets the LibTorch stable ABI of torch 2.11 (one build serves 2.11 and
# later); older torch lacks that ABI, and the registration code relies on 2.11 features too.
_MIN_TORCH = (2, 11)
if tuple(int(x) for x in _torch.__version__.split("+")[0].split(".")[:2]) < _MIN_TORCH:
    raise ImportError(
        f"attnx {__version__} needs torch >= {_MIN_TORCH[0]}.{_MIN_TORCH[1]} (found {_torch.__version__}): its "
        "kernels are built against the LibTorch stable ABI of torch 2.11. Install torch >= 2.11 (a CUDA 13 "
        "build for the native kernels) and keep this wheel, or build attnx from source.")

from . import ops as _ops  # defines the torch.ops.attnx namespace  # noqa: F401
from . import _native

_native.load()

from .ops.attention import attention, pad, unpad, varlen_attention  # noqa: E402
from .ops.block_sparse import block_sparse_attention  # noqa: E402
from .ops.mla import MLAMetadata, mla_decode, mla_decode_metadata  # noqa: E402
from .ops.neighborhood import na1d, na2d, na3d, neighborhood_attention  # noqa: E402
from .ops.sparse import sparse_attention  # noqa: E402
from . import reference, pq, gna, nn  # noqa: E402
from .pq import pq_sparse_attention  # noqa: E402


def info() -> dict:
    """Which ops run a native kernel on CUDA (and for which configs) and which run the reference."""
    return _native.info()


__all__ = ["attention", "varlen_attention", "unpad", "pad", "neighborhood_attention", "na1d", "na2d", "na3d",
           "block_sparse_attention", "mla_decode_metadata", "mla_decode", "MLAMetadata", "sparse_attention",
           "pq_sparse_attention", "pq", "gna", "nn", "reference", "info"]

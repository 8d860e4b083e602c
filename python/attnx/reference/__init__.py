"""Pure-PyTorch references: the executable specification of every attnx op, and its CPU fallback.

Each function here has the signature of the attnx function of the same name. They compute in
float32 (float64 for float64 inputs), never build an L x L matrix for large sizes (queries are
processed in chunks), and are differentiable through autograd (backward by chunked recompute).
"""
from .dense_varlen import attention, pad, unpad, varlen_attention
from .block_sparse import block_sparse_attention
from .mla import MLAMetadata, mla_decode, mla_decode_metadata
from .neighborhood import na1d, na2d, na3d, neighborhood_attention
from .sparse import sparse_attention
from . import pq
from .pq_sparse import pq_sparse_attention

__all__ = ["attention", "varlen_attention", "unpad", "pad", "neighborhood_attention", "na1d", "na2d", "na3d",
           "block_sparse_attention", "mla_decode", "mla_decode_metadata", "MLAMetadata", "sparse_attention",
           "pq", "pq_sparse_attention"]

"""attnx over a torch.distributed process group (NCCL on GPUs, gloo on CPU).

- :func:`shard_sequence` / :func:`gather_sequence` (and the packed-sequence pair
  :func:`shard_varlen` / :func:`gather_varlen`): this rank's part of a sequence and back. With
  ``causal`` every rank holds two mirrored chunks (chunks r and 2W-1-r of 2W), so each rank gets
  the same share of the causal work.
- :func:`context_parallel_attention`, :func:`context_parallel_varlen_attention`: ring attention.
  KV shards travel around the ring (P2P, overlapped with the local attention), partial results
  merge exactly through their lse; the backward sends dK/dV around the ring back to their owners.
- :func:`head_parallel_attention`, :func:`head_parallel_varlen_attention`: the all-to-all
  variant (sequence shards <-> head groups).
- :func:`mla_decode`, :func:`mla_decode_metadata`: MLA decode with the cache split by sequence
  position across ranks; one all-gather merges the partial results through lse.

``group=None`` means the default group; a group of one rank runs the single-GPU op. Every call
first checks that the ranks agree on shapes and dtypes (one small all-gather), so a mismatch is a
ValueError on every rank, never a hang. NVLink multicast stays off on the machines we share
(the variables below are set unless the environment already sets them).
"""
import os as _os

for _name, _value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                      ("NVSHMEM_DISABLE_NVLS", "1")):
    _os.environ.setdefault(_name, _value)

from .context_parallel import context_parallel_attention, context_parallel_varlen_attention  # noqa: E402
from .head_parallel import head_parallel_attention, head_parallel_varlen_attention  # noqa: E402
from .layout import gather_sequence, gather_varlen, shard_sequence, shard_varlen  # noqa: E402
from .mla import DistributedMLAMetadata, mla_decode, mla_decode_metadata  # noqa: E402

__all__ = ["shard_sequence", "gather_sequence", "shard_varlen", "gather_varlen", "context_parallel_attention",
           "context_parallel_varlen_attention", "head_parallel_attention", "head_parallel_varlen_attention",
           "mla_decode", "mla_decode_metadata", "DistributedMLAMetadata"]

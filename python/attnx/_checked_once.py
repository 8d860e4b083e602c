"""Value checks that need a copy to the host (a sync), run once per tensor until it changes.

Models pass the same index tensors (cu_seqlens, cache_seqlens, block tables) to every layer of a
step: the values are checked on first use and again only after an in-place change (the tensor's
version counter) or with other sizes. Inference tensors keep no version counter, so they are
checked on every call.
"""
from __future__ import annotations

import weakref
from typing import Callable, Hashable, Sequence

import torch


class CheckedOnce:
    def __init__(self):
        self._seen: dict = {}  # id(first tensor) -> (weakrefs, versions, key)

    def __call__(self, tensors: Sequence[torch.Tensor], key: Hashable, check: Callable[[], None]) -> None:
        if any(t.is_inference() for t in tensors):
            check()
            return
        tid = id(tensors[0])
        versions = tuple(t._version for t in tensors)
        hit = self._seen.get(tid)
        if (hit is not None and len(hit[0]) == len(tensors) and all(w() is t for w, t in zip(hit[0], tensors))
                and hit[1] == versions and hit[2] == key):
            return
        check()
        seen = self._seen
        refs = [weakref.ref(tensors[0], lambda _: seen.pop(tid, None)), *[weakref.ref(t) for t in tensors[1:]]]
        seen[tid] = (refs, versions, key)

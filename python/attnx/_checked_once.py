"""Value checks that need a copy to the host (a sync), run once per tensor until it changes; and
the call layouts whose structural checks passed (NativeLayouts).

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


class NativeLayouts:
    """CUDA call layouts that passed an op's structural checks and run its native kernel.

    A model calls an op every layer with tensors of one layout; the structural checks (shapes,
    dtypes, devices, strides, alignment, plain-int arguments) and the native/reference decision
    depend only on that layout, so a layout seen before skips them: host time a small batch's
    kernel would otherwise wait for. Value checks keep their own rule (CheckedOnce).
    """

    LIMIT = 256  # layouts remembered per op (then forgotten all at once)

    def __init__(self):
        self._seen: set = set()

    @staticmethod
    def key(tensors: Sequence[torch.Tensor], *values) -> Hashable | None:
        """The layout of the tensors (the first on CUDA) and plain ints (or tuples of them); None
        for anything else, which then always takes the full checks."""
        if not (all(type(t) is torch.Tensor for t in tensors) and tensors[0].is_cuda):
            return None
        plain = []
        for v in values:  # exact int types: True would hash equal to 1 and skip its own checks
            if type(v) in (tuple, list) and all(type(x) is int for x in v):
                plain.append(tuple(v))
            elif type(v) is int:
                plain.append(v)
            else:
                return None
        return tuple((t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16) for t in tensors) + tuple(plain)

    def __contains__(self, key) -> bool:
        return key is not None and key in self._seen

    def add(self, key) -> None:
        if key is None:
            return
        if len(self._seen) >= self.LIMIT:
            self._seen.clear()
        self._seen.add(key)

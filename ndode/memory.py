"""How many bytes a forward pass keeps alive for its backward pass.

The paper's memory claims (Table 1: ResNet O(L), RK-Net O(L~), ODE-Net O(1))
are about exactly this quantity: the activations autograd saves. Counting them
through ``torch.autograd.graph.saved_tensors_hooks`` measures it directly, on
any device, independent of the allocator's caching.
"""

from __future__ import annotations

import weakref
from typing import Callable, Iterable

import torch

__all__ = ["saved_tensor_bytes"]


def _storage_key(t: torch.Tensor) -> tuple:
    s = t.untyped_storage()
    return (t.device.type, t.device.index, s.data_ptr())


def saved_tensor_bytes(fn: Callable[[], object], *, ignore: Iterable[torch.Tensor] = ()) -> int:
    """Run ``fn()`` (a forward pass) and return the bytes of the tensors autograd saved for backward.

    Each storage counts once, in full, however many saved tensors view it.
    Only tensors still held by the graph when ``fn`` returns count: pieces of
    graph that were built and dropped again (say, a rejected solver step) hold
    no memory at backward time. Storages of tensors in ``ignore`` (typically
    ``model.parameters()``, which exist anyway) are left out.
    """
    refs: list[weakref.ref] = []

    def pack(t: torch.Tensor):
        # Keep a detached alias, not t itself: a saved *output* packed as itself would
        # reference its own grad_fn, a cycle that keeps the whole graph alive.
        alias = t.detach()
        refs.append(weakref.ref(alias))
        return alias

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()  # keep the graph alive while counting
    ignored = {_storage_key(t) for t in ignore}
    sizes = {}
    for ref in refs:
        t = ref()
        if t is None:
            continue
        key = _storage_key(t)
        if key not in ignored:
            sizes[key] = t.untyped_storage().nbytes()
    del out
    return sum(sizes.values())

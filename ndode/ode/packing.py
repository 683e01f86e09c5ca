"""A tensor or a tuple of tensors as the one flat tensor the loop integrates, and the error norms over it."""

from __future__ import annotations

import math

import torch

__all__ = []


class _Packing:
    """How a tensor or a tuple of tensors maps to the single tensor the loop integrates."""

    def __init__(self, y0):
        if isinstance(y0, torch.Tensor):
            self.is_tuple = False
            self.shapes = (y0.shape,)
            tensors = (y0,)
        elif isinstance(y0, (tuple, list)) and len(y0) > 0 and all(isinstance(x, torch.Tensor) for x in y0):
            self.is_tuple = True
            self.shapes = tuple(x.shape for x in y0)
            tensors = tuple(y0)
        else:
            raise TypeError(f"y0 must be a tensor or a non-empty tuple of tensors, got {type(y0).__name__}")
        dtypes = {x.dtype for x in tensors}
        devices = {x.device for x in tensors}
        if len(dtypes) > 1 or len(devices) > 1:
            raise TypeError(f"all tensors of a tuple y0 must share dtype and device, got {dtypes} / {devices}")
        self.dtype, self.device = tensors[0].dtype, tensors[0].device
        if not tensors[0].is_floating_point():
            raise TypeError(f"y0 must have a floating dtype (float32 or float64), got {self.dtype}")
        self.sizes = tuple(math.prod(s) for s in self.shapes)
        # the finiteness of y0 is checked by the integrator, on its first read from the device (no extra sync)

    def pack(self, y):
        if not self.is_tuple:
            return y
        return torch.cat([x.reshape(-1) for x in y])

    def unpack(self, y):
        if not self.is_tuple:
            return y
        return tuple(p.view(s) for p, s in zip(y.split(self.sizes), self.shapes))

    def unpack_stack(self, ys):
        """[n, total] -> tuple of [n, *shape_i]."""
        if not self.is_tuple:
            return ys
        n = ys.shape[0]
        return tuple(p.reshape(n, *s) for p, s in zip(ys.split(self.sizes, dim=1), self.shapes))

    def wrap(self, func):
        if not self.is_tuple:
            return func
        unpack, pack, check = self.unpack, self.pack, self.check_output
        checked = False

        def packed(t, y):
            nonlocal checked
            out = func(t, unpack(y))
            if not checked:  # before packing: a component of the right size but the wrong shape would scramble y
                check(out, t)
                checked = True
            return pack(out)

        return packed

    def check_output(self, out, t):
        """func's output for a tuple state: a tuple of tensors with y0's shapes and dtype, component by component."""
        n = len(self.shapes)
        if not isinstance(out, (tuple, list)) or len(out) != n:
            got = type(out).__name__ + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
            raise TypeError(f"func must return a tuple of {n} tensors like y0; at t={float(t)!r} it returned a {got}")
        for i, (o, shape) in enumerate(zip(out, self.shapes)):
            if not isinstance(o, torch.Tensor):
                raise TypeError(f"component {i} of func's output at t={float(t)!r} is a {type(o).__name__}, not a tensor")
            if o.shape != shape:
                raise ValueError(f"component {i} of func's output has shape {tuple(o.shape)} at t={float(t)!r}, "
                                 f"but y0[{i}] has shape {tuple(shape)}")
            if o.dtype != self.dtype and not _autocast(o, self.dtype):
                raise TypeError(f"component {i} of func's output has dtype {o.dtype} at t={float(t)!r}, "
                                f"but y0[{i}] has dtype {self.dtype}")

    def rms_norm(self, reduce=None):
        """Error norm: RMS for a tensor (of any shape, 0-dim included); for tuples, the largest RMS over
        components (as torchdiffeq). ``reduce``: see :func:`solve`'s ``norm_reduce``."""
        if not self.is_tuple:
            inv = 1.0 / math.sqrt(max(self.sizes[0], 1))
            if reduce is None:
                return lambda r: torch.linalg.vector_norm(r) * inv
            return lambda r: reduce(torch.linalg.vector_norm(r) * inv)
        return _max_rms_norm(self.sizes, reduce)


def _max_rms_norm(sizes, reduce=None):
    """The largest RMS over the consecutive blocks of ``sizes`` entries of a flat tensor (torchdiffeq's mixed
    norm). Entries past the blocks do not count (the adjoint's seminorm leaves its parameter adjoints out).
    ``reduce`` (data-parallel training) turns this process's RMS of each block into the RMS over every
    process's data before the largest is taken."""
    total = sum(sizes)
    invs = [1.0 / math.sqrt(max(s, 1)) for s in sizes]
    if len(sizes) == 1:
        inv = invs[0]
        if reduce is None:
            return lambda r: torch.linalg.vector_norm(r[:total]) * inv
        return lambda r: reduce(torch.linalg.vector_norm(r[:total]) * inv)

    def norm(r):
        n = torch.stack([torch.linalg.vector_norm(p) * i for p, i in zip(r[:total].split(sizes), invs)])
        return (n if reduce is None else reduce(n)).max()

    return norm


def _autocast(out, dtype) -> bool:
    """Whether a func output of a lower precision than the state comes from torch.autocast (then it is cast)."""
    return out.is_floating_point() and dtype.is_floating_point and torch.is_autocast_enabled(out.device.type)


def _check_func_output(f, y, where) -> bool:
    """Check func's (packed) output against the state; returns whether outputs must be cast (autocast)."""
    if not isinstance(f, torch.Tensor):
        raise TypeError(f"func must return a tensor (or a tuple like y0); at {where} it returned {type(f).__name__}")
    if f.shape != y.shape:
        raise ValueError(f"func returned shape {tuple(f.shape)} at {where}, but the state has shape {tuple(y.shape)}")
    if f.dtype != y.dtype:
        # Under torch.autocast a func computes in bf16/fp16 while the state stays in its own dtype:
        # the output is cast to the state's dtype. Without autocast a different dtype is a mistake.
        if _autocast(f, y.dtype):
            return True
        raise TypeError(f"func returned dtype {f.dtype} at {where}, but the state has dtype {y.dtype}")
    return False


def _user_norm(norm, unpack, dtype, device, reduce=None):
    """A norm given in options, called as torchdiffeq does: on the scaled error shaped like y0 (a tuple for a
    tuple state); its result as a 0-dim tensor of the state's dtype (combined over processes by ``reduce``)."""
    if reduce is None:
        return lambda r: torch.as_tensor(norm(unpack(r)), dtype=dtype, device=device)
    return lambda r: reduce(torch.as_tensor(norm(unpack(r)), dtype=dtype, device=device))

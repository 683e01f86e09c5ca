"""One solve's settings, checked (:class:`_Plan`), and the interface of a differentiation method (:class:`Adjoint`).

The plan knows methods only through the registry (``ndode.ode.methods``): it
asks a method for its options' check and its integrator, never which method it is.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .checks import _check_t, _check_tol
from .methods import Method, get_method
from .packing import _Packing, _user_norm
from .types import Solution, SolverStats


@dataclass
class _Plan:
    func: Callable
    method: Method  # from the registry (ndode.ode.methods)
    times: list
    rtol: float
    atol: float
    options: dict
    packing: _Packing
    stats: SolverStats

    ts: torch.Tensor | None  # None when t came as Python floats (see ``t_tensor``)
    # combines the error norms over data-parallel processes (solve's ``norm_reduce``); the adjoint's backward
    # solve uses it too
    norm_reduce: Callable | None = None

    def integrator(self):
        p = self.packing
        norm = self.options.get("norm")
        reduce = self.norm_reduce
        norm = p.rms_norm(reduce) if norm is None else _user_norm(norm, p.unpack, p.dtype, p.device, reduce)
        return self.method.integrator(p.wrap(self.func), self.rtol, self.atol, self.options, self.stats, p.dtype,
                                      p.device, norm=norm, callbacks=_callbacks(self.func, self.options),
                                      unpack=p.unpack)

    def run(self, y0_packed, on_step=None):
        """The forward solve: the packed state at every output time (``on_step(t, h, y, outs)`` sees every
        accepted step; see ``_Integrator.solve_adaptive``)."""
        integ = self.integrator()
        if len(self.times) == 1:
            integ.check_y0(y0_packed)
            return [y0_packed]
        if "step_size" in self.options:
            return integ.solve_fixed(y0_packed, self.times, on_step=on_step)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.method.differentiable):
            return integ.solve_adaptive(y0_packed, self.times, on_step=on_step)

    def t_tensor(self) -> torch.Tensor:
        """``t`` as given, or the Python-float times as a tensor on the state's device (a copy to it, no sync)."""
        if self.ts is None:
            self.ts = torch.tensor(self.times, dtype=self.packing.dtype, device=self.packing.device)
        return self.ts

    def solution(self, ys_packed) -> Solution:
        return Solution(self.packing.unpack_stack(ys_packed), self.t_tensor(), self.stats)


CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")


def _callbacks(func, options, suffix=""):
    """torchdiffeq's step callbacks, looked up on ``func`` (``suffix="_adjoint"``: the backward pass's twins);
    ``None`` when ``func`` defines none. A fixed grid has no accepted or rejected steps: setting those warns."""
    cbs = tuple(getattr(func, name + suffix, None) for name in CALLBACKS)
    if not any(c is not None for c in cbs):
        return None
    if "step_size" in options and (cbs[1] is not None or cbs[2] is not None):
        warnings.warn(f"func defines callback_accept_step{suffix}/callback_reject_step{suffix}, but a fixed-grid "
                      f"solve accepts every step and rejects none; only callback_step{suffix} is called", stacklevel=4)
        cbs = (cbs[0], None, None)
    return cbs


def _plan(func, y0, t, rtol, atol, method, options, norm_reduce=None, controller=None) -> _Plan:
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
    m = get_method(method)
    if controller is not None:
        if not (m.adaptive and m.own_steps):
            raise ValueError(f"controller applies to an adaptive method of ndode's; method {m.name!r} "
                             f"{'takes fixed steps' if m.own_steps else 'chooses its own steps'}")
        if isinstance(options, dict) and options.get("controller") is not None:
            raise ValueError("controller given both as solve(..., controller=) and in options['controller']; "
                             "pass it once")
        if options is None or isinstance(options, dict):
            options = dict(options or {}, controller=controller)
    if norm_reduce is not None:
        if not callable(norm_reduce):
            raise TypeError(f"norm_reduce must be None or callable (this process's error norms -> the norms over "
                            f"all processes' data), got {type(norm_reduce).__name__}")
        if not m.own_steps:
            raise ValueError(f"norm_reduce applies to ndode's Runge-Kutta methods; method={m.name!r} chooses its "
                             "own steps, so data-parallel processes cannot share its error norm")
    rtol = _check_tol("rtol", rtol)
    atol = _check_tol("atol", atol)
    if m.adaptive and rtol == 0 and atol == 0:
        raise ValueError(f"rtol and atol are both 0; adaptive method {method!r} needs at least one positive tolerance")
    opts = m.check_options(options)
    packing = _Packing(y0)
    times = _check_t(t)
    return _Plan(func, m, times, rtol, atol, opts, packing, SolverStats(), t if isinstance(t, torch.Tensor) else None,
                 norm_reduce)


class Adjoint:
    """How :func:`ndode.solve` differentiates a solve when passed as ``adjoint=``; see ``ndode.BacksolveAdjoint``.

    The core calls ``run(plan, y0)`` and knows nothing else about it, so an
    adjoint depends on the core and never the reverse.
    """

    def run(self, plan: _Plan, y0) -> Solution:
        raise NotImplementedError

"""The public entry points of the solver core: :func:`solve` and the torchdiffeq-shaped :func:`odeint`.

The machinery (checks, packing of tuple states, the Runge–Kutta loop) lives in
``ndode._core``, which the adjoint (``ndode.adjoint``) imports too. This module
never imports the adjoint: a differentiation method is an object handed to
``solve(..., adjoint=...)`` that runs itself on the core's plan.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._core import METHODS, Adjoint, Solution, SolverError, SolverStats, _plan

__all__ = ["solve", "odeint", "Solution", "SolverStats", "SolverError", "Adjoint", "METHODS"]


def solve(
    func: Callable,
    y0,
    t,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: str = "dopri5",
    options: dict | None = None,
    adjoint: Adjoint | None = None,
) -> Solution:
    """Solve ``dy/dt = func(t, y)`` from ``y(t[0]) = y0`` and report the values at every ``t``.

    ``t`` is a 1-D tensor of times, or a list of Python floats (times known on
    the host are never read back from a GPU). Returns a :class:`Solution` with
    ``ys`` (``[len(t), *y0.shape]``, or a tuple of such for a tuple ``y0``) and
    ``stats`` (function evaluations, accepted and rejected steps).

    Gradients come from backpropagating through the solver's operations, or,
    with ``adjoint=ndode.BacksolveAdjoint(...)``, from the adjoint method (see
    :func:`ndode.odeint_adjoint`); then ``stats`` also gets the backward pass's
    counts once ``backward()`` has run.
    """
    if adjoint is True:
        raise TypeError("adjoint=True: pass the method, adjoint=ndode.BacksolveAdjoint() "
                        "(its rtol, atol, method, options and params set the backward solve)")
    if not (adjoint is None or adjoint is False or isinstance(adjoint, Adjoint)):
        raise TypeError(f"adjoint must be None or an adjoint method such as ndode.BacksolveAdjoint(), "
                        f"got {type(adjoint).__name__}")
    plan = _plan(func, y0, t, rtol, atol, method, options)
    if isinstance(adjoint, Adjoint):
        return adjoint.run(plan, y0)
    if isinstance(t, torch.Tensor) and t.requires_grad:
        raise ValueError(
            "t requires grad, but direct backpropagation through odeint differentiates only y0 and the "
            "parameters of func; use ndode.odeint_adjoint for gradients with respect to t"
        )
    return plan.solution(torch.stack(plan.run(plan.packing.pack(y0))))


def odeint(func, y0, t, rtol=1e-7, atol=1e-9, method="dopri5", options=None):
    """torchdiffeq-compatible: returns ``y`` at every ``t``, differentiable by ordinary autograd."""
    return solve(func, y0, t, rtol=rtol, atol=atol, method=method, options=options).ys

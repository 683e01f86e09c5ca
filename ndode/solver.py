"""The solver's entry point :func:`solve` (the torchdiffeq-shaped wrappers live in ``ndode.api``, above it).

The machinery (checks, packing of tuple states, the Runge–Kutta loop, the
method registry, the plan) lives in ``ndode.ode``, which the adjoints import
too. This module never imports an adjoint: a differentiation method is an
object handed to ``solve(..., adjoint=...)`` that runs itself on the plan.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .ode.controller import StepController
from .ode.plan import Adjoint, _plan
from .ode.types import Solution

__all__ = ["solve"]


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
    norm_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    controller: StepController | str | None = None,
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

    ``norm_reduce`` is for data-parallel training, where each process solves
    on its own share of a batch: it maps this process's error norms (a tensor
    of RMS values, one per state component; a custom ``options["norm"]``'s
    value) to the norms over every process's data, e.g. by an all-reduce
    (``ndode.harness.ddp.norm_reduce``). Every adaptive solve of this call
    uses it (the forward solve, its initial step, and the backsolve adjoint's
    backward solve), so all processes accept, reject and size each step alike.

    ``controller`` sizes the steps of an adaptive solve: ``ndode.IController()``
    (the default, SciPy's ``RK45`` controller) or ``ndode.PIController()``, or
    their names ``"integral"``/``"pi"``; the same as ``options={"controller": ...}``.
    The backsolve adjoint's backward solve uses it too unless its own options say otherwise.
    """
    if adjoint is True:
        raise TypeError("adjoint=True: pass the method, adjoint=ndode.BacksolveAdjoint() "
                        "(its rtol, atol, method, options and params set the backward solve)")
    if not (adjoint is None or adjoint is False or isinstance(adjoint, Adjoint)):
        raise TypeError(f"adjoint must be None or an adjoint method such as ndode.BacksolveAdjoint(), "
                        f"got {type(adjoint).__name__}")
    plan = _plan(func, y0, t, rtol, atol, method, options, norm_reduce, controller)
    if isinstance(adjoint, Adjoint):
        return adjoint.run(plan, y0)
    y0p = plan.packing.pack(y0)
    if isinstance(t, torch.Tensor) and t.requires_grad and torch.is_grad_enabled():
        opts = plan.options
        if "step_size" in opts and "grid_constructor" not in opts and "perturb" not in opts:
            # a fixed grid: differentiate the discrete map itself, t included (each interval in rescaled time)
            return plan.solution(torch.stack(_traced_grid(plan, y0p, t)))
        # the time gradients are the exact boundary terms (as the adjoint's): the solve's operations never see t
        ys = plan.run(_TimeGrad.apply(plan, t, y0p, True))
        ys[0] = y0p  # y(t_0) = y0 whatever t_0 is: its gradient goes to y0 only
        return plan.solution(_TimeGrad.apply(plan, t, torch.stack(ys), False))
    return plan.solution(torch.stack(plan.run(y0p)))


def _traced_grid(plan, y0, t):
    """A fixed-grid solve whose output times are in the graph: on ``[t_a, t_b]`` with ``n`` steps the method
    takes the same steps as on ``ds/dt = Δ f(t_a + sΔ, y)``, ``s ∈ [0, 1]``, ``Δ = t_b - t_a`` (a tensor), so
    ordinary autograd differentiates the discrete solution with respect to ``t`` exactly."""
    p = plan.packing
    func = p.wrap(plan.func)
    tt = t.to(p.dtype)
    h = plan.options["step_size"]
    ys = [y0]
    for i in range(1, len(plan.times)):
        ta, d = tt[i - 1], tt[i] - tt[i - 1]
        n = 1 if h is None else max(1, math.ceil(abs(plan.times[i] - plan.times[i - 1]) / h * (1 - 1e-12)))
        integ = plan.method.integrator(lambda s, y, ta=ta, d=d: d * func(ta + s * d, y), plan.rtol, plan.atol,
                                       {"step_size": 1.0 / n}, plan.stats, p.dtype, p.device)
        ys.append(integ.solve_fixed(ys[-1], [0.0, 1.0])[-1])
    return ys


def _f_at(plan, i, y):
    """``func(t_i, y)`` (packed, in the state's dtype) without a graph: for the time gradients."""
    p = plan.packing
    with torch.no_grad():
        return p.wrap(plan.func)(torch.scalar_tensor(plan.times[i], dtype=p.dtype, device=p.device), y).to(p.dtype)


class _TimeGrad(torch.autograd.Function):
    """Identity on ``y``: the packed y0 on its way into the solve (``into``), or the stacked outputs on their way
    out. Backward, the Appendix B.2 boundary terms of the time gradient: into the solve, ``a`` (the gradient
    reaching y0 through the solve, not through the output ``y(t_0) = y0``) gives ``∂L/∂t_0 = -aᵀ f(t_0, y_0)``;
    out of it, ``∂L/∂t_i = g_iᵀ f(t_i, y_i)`` for ``i ≥ 1`` (``g_i``: the gradient reaching ``y(t_i)``)."""

    @staticmethod
    def forward(ctx, plan, t, y, into: bool):
        ctx.plan, ctx.into, ctx.t_meta = plan, into, (t.shape, t.dtype, t.device)
        ctx.save_for_backward(y)
        return y.view_as(y)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        shape, dtype, device = ctx.t_meta
        grad_t = torch.zeros(shape, dtype=dtype, device=device)
        if ctx.into:
            grad_t[0] = -torch.sum(g * _f_at(ctx.plan, 0, y)).to(dtype)
        else:
            for i in range(1, len(ctx.plan.times)):
                grad_t[i] = torch.sum(g[i] * _f_at(ctx.plan, i, y[i])).to(dtype)
        return None, grad_t, g, None

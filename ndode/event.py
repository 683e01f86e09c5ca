"""Solving until an event (torchdiffeq's ``odeint_event``): the event time and state, differentiable.

The search runs without a graph: the core's loop asks after every accepted
step whether ``event_fn(t, y)`` changed sign across it, and bisects on the
step's interpolant (the tableau's dense output, else a cubic Hermite one)
to the precision of the times. Gradients then come from one differentiable
solve to the found time ``t*`` and the implicit function theorem: with
``G = event_fn(t*, y(t*))`` (zero, but in the graph) and ``D = dG/dt`` along the
solution (a number), ``t_event = t* - G / D`` has the value ``t*`` (up to one
Newton correction) and the gradient ``-(∂G/∂θ) / D`` the theorem gives, and
``y_event = y(t*) + f(t*, y(t*)) (t_event - t*)`` carries ``dy/dt = f`` to it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .ode.plan import _plan
from .ode.types import SolverError

__all__ = ["solve_event"]

BISECTIONS = 200  # far more than enough: the loop stops when the bracket is two adjacent floats


def _find_event(func, y0, t0: float, direction: float, event_fn, rtol, atol, method, options):
    """The first time after ``t0`` (in ``direction``) where ``event_fn`` changes sign, as a Python float."""
    plan = _plan(func, y0, [t0, t0 + direction], rtol, atol, method, options)
    p = plan.packing
    times = [t0, direction * math.inf]
    integ = plan.integrator()

    def g(t, y):
        return float(event_fn(torch.scalar_tensor(t, dtype=p.dtype, device=p.device), p.unpack(y)))

    y0p = p.pack(y0).detach()
    g0 = [g(t0, y0p)]

    def on_step(t, y, t_next, y_new, interp):
        g1 = g(t_next, y_new)
        if g0[0] == 0.0:  # started on a root: wait until event_fn leaves it (one that stays 0 ends the solve now)
            if g1 == 0.0:
                return t_next
            g0[0] = g1
            return None
        if g1 != 0.0 and (g1 > 0) == (g0[0] > 0):
            g0[0] = g1
            return None
        # a sign change, or a zero at the step's end: bisect to adjacent floats for the first time where event_fn
        # leaves its sign at the step's start. A zero counts as left: an event_fn that drops to 0 past a terminal
        # time (torchdiffeq's learn_physics) has its event there, and a sign change inside the step comes first.
        lo, hi, sign = t, t_next, g0[0] > 0
        for _ in range(BISECTIONS):
            mid = 0.5 * (lo + hi)
            if mid in (lo, hi):
                break
            gm = g(mid, interp(mid))
            if gm != 0.0 and (gm > 0) == sign:
                lo = mid
            else:
                hi = mid
        return hi

    with torch.no_grad():
        if "step_size" in plan.options:
            t_event = integ.solve_fixed(y0p, times, event=on_step)
        else:
            t_event = integ.solve_adaptive(y0p, times, event=on_step)
    if not isinstance(t_event, float):
        raise SolverError("the solve ended before event_fn changed sign")
    return t_event


def solve_event(func, y0, t0, *, event_fn, odeint_interface, reverse_time=False, **kwargs):
    """Solve ``dy/dt = func(t, y)`` from ``y(t0) = y0`` until ``event_fn(t, y)`` crosses zero.

    Returns ``(t_event, ys)``: the event time (a 0-dim tensor) and the state at
    ``[t0, t_event]`` (``[2, *y0.shape]``, a tuple of such for a tuple state),
    both differentiable with respect to ``y0``, ``t0``, the parameters of
    ``func`` and of ``event_fn``. ``odeint_interface`` makes the differentiable
    solve (``ndode.odeint`` or ``ndode.odeint_adjoint``); ``kwargs`` (``rtol``,
    ``atol``, ``method``, ``options``, ``adjoint_*``) go to it, and the first four
    to the event search too. ``ndode.odeint_event`` is this with torchdiffeq's defaults.
    """
    direction = -1.0 if reverse_time else 1.0
    t0_value = float(t0.detach()) if isinstance(t0, torch.Tensor) else float(t0)
    search = {k: kwargs[k] for k in ("rtol", "atol", "method", "options") if kwargs.get(k) is not None}
    search = dict(dict(rtol=1e-7, atol=1e-9, method="dopri5"), **search)
    t_star = _find_event(func, y0, t0_value, direction, event_fn, search["rtol"], search["atol"], search["method"],
                         search.get("options"))

    state = y0[0] if isinstance(y0, (tuple, list)) else y0
    tdtype = t0.dtype if isinstance(t0, torch.Tensor) and t0.is_floating_point() else state.dtype
    t0_t = t0.reshape(()) if isinstance(t0, torch.Tensor) else torch.tensor(t0_value, dtype=tdtype, device=state.device)
    ts = torch.stack([t0_t.to(tdtype), torch.tensor(t_star, dtype=tdtype, device=state.device)])
    ys = odeint_interface(func, y0, ts, **kwargs)
    is_tuple = isinstance(ys, tuple)
    y_star = tuple(y[-1] for y in ys) if is_tuple else ys[-1]
    t_star_t = ts[1]
    G = event_fn(t_star_t, y_star)
    # D = dG/dt along the solution = ∂g/∂t + ∇_y g · f, a number (no graph)
    with torch.enable_grad():
        tt = t_star_t.detach().requires_grad_(True)
        yd: Any = (tuple(y.detach().requires_grad_(True) for y in y_star) if isinstance(y_star, tuple)
                   else y_star.detach().requires_grad_(True))
        gd = event_fn(tt, yd)
        inputs = (tt, *yd) if is_tuple else (tt, yd)
        # an event_fn whose value depends on neither t nor y (torchdiffeq's learn_physics returns zeros_like(t) once
        # its events are used up) has no path to them: its root does not move with anything, t_event is t*
        grads = (torch.autograd.grad(gd, inputs, allow_unused=True) if gd.requires_grad
                 else (None,) * len(inputs))
    if all(g is None for g in grads) and not G.requires_grad:
        return t_star_t, ys
    with torch.no_grad():
        f = func(t_star_t.to(state.dtype), yd if not is_tuple else tuple(yd))
        fs = f if is_tuple else (f,)
        D = 0.0 if grads[0] is None else grads[0].double()
        for gy, fy in zip(grads[1:], fs):
            if gy is not None:
                D = D + (gy * fy).sum().double()
        D = float(D)
    if D == 0.0:
        raise SolverError(f"event_fn is flat at its root t={t_star!r} (dG/dt = 0): the event time has no gradient")
    t_event = t_star_t - G.to(tdtype) / D
    dt = (t_event - t_star_t).to(state.dtype)
    if is_tuple:
        y_event = tuple(y + fy.detach() * dt for y, fy in zip(y_star, fs))
        ys = tuple(torch.stack([y[0], ye]) for y, ye in zip(ys, y_event))
    else:
        ys = torch.stack([ys[0], y_star + fs[0].detach() * dt])
    return t_event, ys

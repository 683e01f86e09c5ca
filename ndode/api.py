"""torchdiffeq's call shapes over ndode's engine: :func:`odeint`, :func:`odeint_adjoint`, :func:`odeint_event`.

Switching from torchdiffeq is one import. These wrappers sit above every
engine module (``ndode.solver``, ``ndode.adjoint``, ``ndode.checkpoint_adjoint``,
``ndode.event``) and nothing in the engine imports them, so the engine's
imports all point one way (``tests/test_imports.py`` checks it).
"""

from __future__ import annotations

import torch

from .adjoint import BacksolveAdjoint
from .checkpoint_adjoint import CheckpointAdjoint
from .event import solve_event
from .solver import solve

__all__ = ["odeint", "odeint_adjoint", "odeint_event"]


def odeint(func, y0, t, rtol=1e-7, atol=1e-9, method="dopri5", options=None, *, event_fn=None):
    """torchdiffeq-compatible: returns ``y`` at every ``t``, differentiable by ordinary autograd (``y0``, the
    parameters of ``func``, and ``t`` when it requires grad). ``method=None`` means ``"dopri5"``; a step-size
    controller goes in ``options={"controller": ...}``.

    With ``event_fn`` (torchdiffeq's event handling): integrate from ``t[0]`` (in the direction of ``t[1]``
    if given) until ``event_fn(t, y)`` crosses zero; returns ``(t_event, ys)`` with ``ys`` the state at
    ``[t[0], t_event]``; see :func:`odeint_event`.
    """
    method = "dopri5" if method is None else method
    if event_fn is not None:
        return _until_event(func, y0, t, event_fn=event_fn, rtol=rtol, atol=atol, method=method, options=options)
    return solve(func, y0, t, rtol=rtol, atol=atol, method=method, options=options).ys


def odeint_adjoint(
    func,
    y0,
    t,
    rtol=1e-7,
    atol=1e-9,
    method="dopri5",
    options=None,
    adjoint_rtol=None,
    adjoint_atol=None,
    adjoint_method=None,
    adjoint_options=None,
    adjoint_params=None,
    adjoint="backsolve",
    *,
    event_fn=None,
):
    """torchdiffeq-compatible adjoint solve: same result as :func:`ndode.odeint`, O(1) memory in the steps.

    Gradients reach ``y0``, every parameter of ``func`` (an ``nn.Module``) or
    the tensors in ``adjoint_params``, and every entry of ``t``. The backward
    solve uses ``adjoint_method``/``adjoint_rtol``/``adjoint_atol`` (default:
    the forward ones) and ``adjoint_options``, which take the solver options
    plus ``norm``: ``"seminorm"`` (default; the parameter-adjoint channels are
    left out of the error estimate, Kidger et al. 2021) or ``"full"``. The same
    as ``ndode.solve(..., adjoint=BacksolveAdjoint(rtol=adjoint_rtol, ...)).ys``.

    ``adjoint="checkpoint"`` (not a torchdiffeq keyword) differentiates the
    discrete solve exactly instead, by recomputing its steps in reverse
    (:class:`ndode.CheckpointAdjoint`; no backward solve, so no
    ``adjoint_rtol``/``atol``/``method``/``options``).
    With ``event_fn``: solve until it crosses zero, as :func:`ndode.odeint` with ``event_fn`` (torchdiffeq's
    event handling), gradients by the backsolve adjoint.
    """
    if event_fn is not None:
        if adjoint != "backsolve":
            raise ValueError(f"event_fn is solved with the backsolve adjoint; adjoint={adjoint!r} is not supported with it")
        return _until_event(func, y0, t, event_fn=event_fn, odeint_interface=odeint_adjoint, rtol=rtol, atol=atol,
                            method=method, options=options, adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol,
                            adjoint_method=adjoint_method, adjoint_options=adjoint_options,
                            adjoint_params=adjoint_params)
    if adjoint == "checkpoint":
        given = [k for k, v in (("adjoint_rtol", adjoint_rtol), ("adjoint_atol", adjoint_atol),
                                ("adjoint_method", adjoint_method), ("adjoint_options", adjoint_options))
                 if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} set the backsolve adjoint's backward solve; adjoint='checkpoint' "
                             "has none (use ndode.solve(..., adjoint=ndode.CheckpointAdjoint(max_stored_steps=n)) "
                             "to cap its memory)")
        adjoint = CheckpointAdjoint(params=adjoint_params)
    elif adjoint == "backsolve":
        adjoint = BacksolveAdjoint(rtol=adjoint_rtol, atol=adjoint_atol, method=adjoint_method,
                                   options=adjoint_options, params=adjoint_params)
    else:
        raise ValueError(f"adjoint must be 'backsolve' or 'checkpoint', got {adjoint!r}")
    return solve(func, y0, t, rtol=rtol, atol=atol, method=method, options=options, adjoint=adjoint).ys


def odeint_event(func, y0, t0, *, event_fn, reverse_time=False, odeint_interface=odeint, **kwargs):
    """Solve ``dy/dt = func(t, y)`` from ``y(t0) = y0`` until ``event_fn(t, y)`` crosses zero (torchdiffeq's API).

    Returns ``(t_event, ys)``: the event time (a 0-dim tensor) and the state at
    ``[t0, t_event]`` (``[2, *y0.shape]``, a tuple of such for a tuple state),
    both differentiable with respect to ``y0``, ``t0``, the parameters of
    ``func`` and of ``event_fn``. ``reverse_time=True`` integrates towards
    smaller times. ``odeint_interface`` (default :func:`odeint`; e.g.
    :func:`odeint_adjoint`) makes the differentiable solve; ``kwargs``
    (``rtol``, ``atol``, ``method``, ``options``, ``adjoint_*``) go to it, and the
    first four to the event search too. A fixed-step method needs
    ``options={"step_size": h}`` here (there is no grid of output times). An
    ``event_fn`` whose value depends on neither ``t`` nor ``y`` ends the solve
    after the first step, with no gradient through the event time.
    """
    return solve_event(func, y0, t0, event_fn=event_fn, reverse_time=reverse_time,
                       odeint_interface=odeint_interface, **kwargs)


def _until_event(func, y0, t, *, event_fn, odeint_interface=odeint, **kwargs):
    """``odeint(..., event_fn=...)``: the direction is that of ``t[1] - t[0]`` when ``t`` has two entries."""
    times = t.detach().tolist() if isinstance(t, torch.Tensor) else list(t)
    reverse = len(times) > 1 and times[1] < times[0]
    return solve_event(func, y0, t[0], event_fn=event_fn, reverse_time=reverse, odeint_interface=odeint_interface,
                       **kwargs)

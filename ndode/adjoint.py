"""The adjoint sensitivity method (Chen et al. 2018, §2 and Appendix B) as a ``torch.autograd.Function``.

Forward: an ordinary solve under ``no_grad``; only the outputs ``y(t_i)`` and
the parameters are saved, so memory does not grow with the number of steps.

Backward: one solve of the augmented state ``[y, a, a_θ]`` from ``t_N`` back
to ``t_0`` (Algorithm 1), where ``a = ∂L/∂y`` follows ``da/dt = -aᵀ ∂f/∂y`` and
``a_θ`` accumulates ``-aᵀ ∂f/∂θ``. The solve passes every output time exactly;
there the state ``y`` is reset to the saved forward value and ``a`` jumps by
that output's incoming gradient. The step size is carried across output times
(no restart, no fresh initial-step search per interval).

Time gradients (Appendix B.2): the time adjoint obeys
``da_t/dt = -aᵀ ∂f/∂t`` and ``d(aᵀf)/dt = aᵀ ∂f/∂t`` along the solution, so its
integral collapses to boundary terms: ``∂L/∂t_i = g_iᵀ f(t_i, y_i)`` for
``i ≥ 1`` and ``∂L/∂t_0 = -a(t_0⁺)ᵀ f(t_0, y_0)``, where ``a(t_0⁺)`` excludes
``g_0``. That is exact and costs one evaluation per output time instead of an
extra channel in every backward step.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .ode.checks import _check_tol
from .ode.methods import get_method
from .ode.packing import _max_rms_norm
from .ode.plan import Adjoint, _callbacks
from .ode.types import Solution, SolverStats

__all__ = ["BacksolveAdjoint", "ADJOINT_NORMS"]

ADJOINT_NORMS = ("seminorm", "full")
# Measured on the MNIST ODE-Net (README, "Adjoint error control"): same gradients, fewer backward evaluations.
DEFAULT_ADJOINT_NORM = "seminorm"


def _check_adjoint_params(func, adjoint_params) -> tuple[torch.Tensor, ...]:
    if adjoint_params is None:
        if not isinstance(func, torch.nn.Module):
            raise TypeError(
                f"func is a {type(func).__name__}, not a torch.nn.Module, so its parameters cannot be found; "
                "pass adjoint_params=(tensors to differentiate) (use () if there are none)"
            )
        # frozen parameters (requires_grad=False) are simply not differentiated
        return tuple(p for p in func.parameters() if p.requires_grad)
    if isinstance(adjoint_params, torch.Tensor) or not isinstance(adjoint_params, (list, tuple)):
        raise TypeError(f"adjoint_params must be a list or tuple of tensors, got {type(adjoint_params).__name__}")
    seen: dict[int, int] = {}
    for i, p in enumerate(adjoint_params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"adjoint_params[{i}] must be a tensor, got {type(p).__name__}")
        if not p.requires_grad:
            raise ValueError(f"adjoint_params[{i}] (shape {tuple(p.shape)}) does not require grad; "
                             "only tensors with requires_grad=True can be differentiated")
        if not p.is_leaf:
            raise ValueError(f"adjoint_params[{i}] (shape {tuple(p.shape)}) is not a leaf tensor; "
                             "pass the leaf parameters the non-leaf one is computed from")
        if id(p) in seen:
            raise ValueError(f"adjoint_params[{i}] is the same tensor as adjoint_params[{seen[id(p)]}]; "
                             "each parameter may appear once")
        seen[id(p)] = i
    return tuple(adjoint_params)




class _Adjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, adj, t, y0, *params):
        ys = torch.stack(plan.run(y0))
        ctx.plan, ctx.adj = plan, adj
        ctx.save_for_backward(t, ys, *params)
        return ys

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ys):
        plan, adj = ctx.plan, ctx.adj
        t, ys, *params = ctx.saved_tensors
        params = tuple(params)
        func = plan.packing.wrap(plan.func)
        times = plan.times
        n = len(times)
        shape = ys.shape[1:]
        ny = ys[0].numel()
        psizes = [p.numel() for p in params]
        np_ = sum(psizes)
        dtype, device = ys.dtype, ys.device
        stats: SolverStats = plan.stats
        bstats = SolverStats()
        want_t = ctx.needs_input_grad[2]
        grad_t = torch.zeros(n, dtype=t.dtype, device=t.device) if want_t else None

        def f_at(i):  # f(t_i, y_i) at a saved output, for the time gradients
            bstats.nfe += 1
            with torch.no_grad():
                return func(torch.scalar_tensor(times[i], dtype=dtype, device=device), ys[i]).to(dtype)

        def aug_dynamics(tt, aug):
            y = aug[:ny].view(shape)
            a = aug[ny : 2 * ny].view(shape)
            with torch.enable_grad():
                y = y.detach().requires_grad_(True)
                fy = func(tt, y)
                if fy.dtype != dtype:  # torch.autocast (the forward pass checked func's dtype)
                    fy = fy.to(dtype)
                inputs = (y,) + params
                # a func that ignores y (or everything) has no path to it: autograd says None, the adjoint reads 0
                vjp = (torch.autograd.grad(fy, inputs, -a, allow_unused=True) if fy.requires_grad
                       else (None,) * len(inputs))
            parts = [fy.detach().reshape(-1)]
            for v, x in zip(vjp, inputs):
                parts.append(torch.zeros(x.numel(), dtype=dtype, device=device) if v is None else v.reshape(-1))
            return torch.cat(parts)

        def on_output(j, aug):
            i = n - 1 - j  # the backward solve visits outputs from last to first
            a = aug[ny : 2 * ny]
            if grad_t is not None:
                fi = f_at(i).reshape(-1)
                if i == 0:
                    grad_t[0] = -torch.dot(a, fi)
                else:
                    grad_t[i] = torch.dot(grad_ys[i].reshape(-1), fi)
            return torch.cat([ys[i].reshape(-1), a + grad_ys[i].reshape(-1), aug[2 * ny :]])

        grad_y0 = grad_ys[0]
        grad_params = [torch.zeros_like(p) for p in params]
        if n > 1:
            # the forward's norm for y and for a alike (the largest RMS over the state's components, so a CNF's
            # log p is not swamped by z); "full" adds every parameter tensor as its own channel (as torchdiffeq's
            # mixed norm), "seminorm" leaves the parameter adjoints out of the error estimate; data-parallel
            # processes combine them as in the forward solve (plan.norm_reduce), so they take the same steps back
            ysizes, reduce = plan.packing.sizes, plan.norm_reduce
            if callable(adj.norm):
                norm = _channel_norm(adj.norm, plan.packing.shapes, [p.shape for p in params], dtype, device, reduce)
            else:
                norm = _max_rms_norm((*ysizes, *ysizes) + (tuple(psizes) if adj.norm == "full" else ()), reduce)
            integ = adj.method.integrator(aug_dynamics, adj.rtol, adj.atol, adj.options, bstats, dtype, device,
                                          norm=norm, phase="backward pass",
                                          callbacks=_callbacks(plan.func, adj.options, "_adjoint"))
            aug0 = torch.cat([ys[-1].reshape(-1), grad_ys[-1].reshape(-1),
                              torch.zeros(np_, dtype=dtype, device=device)])
            if grad_t is not None:
                grad_t[-1] = torch.dot(grad_ys[-1].reshape(-1), f_at(n - 1).reshape(-1))
            back_times = times[::-1]
            with torch.no_grad():
                if "step_size" in adj.options:
                    out = integ.solve_fixed(aug0, back_times, on_output=on_output)
                else:
                    out = integ.solve_adaptive(aug0, back_times, on_output=on_output)
            aug = out[-1]
            grad_y0 = aug[ny : 2 * ny].view(shape)
            grad_params = [g.view_as(p) for g, p in zip(aug[2 * ny :].split(psizes), params)]
        stats.nfe_backward = bstats.nfe
        stats.n_accepted_backward = bstats.n_accepted
        stats.n_rejected_backward = bstats.n_rejected
        return (None, None, grad_t, grad_y0, *grad_params)


def _channel_norm(norm, yshapes, pshapes, dtype, device, reduce=None):
    """A user's adjoint norm called as torchdiffeq calls it: on ``(t, *y, *a_y, *a_params)``, each shaped like its
    tensor. ndode's backward state has no time channel (time gradients are boundary terms): ``t`` is 0 there."""
    shapes = (*yshapes, *yshapes, *pshapes)
    sizes = [math.prod(s) for s in shapes]
    zero = torch.zeros((), dtype=dtype, device=device)

    def channel_norm(r):
        parts = tuple(x.view(s) for x, s in zip(r.split(sizes), shapes))
        n = torch.as_tensor(norm((zero, *parts)), dtype=dtype, device=device)
        return n if reduce is None else reduce(n)

    return channel_norm


class _Bound:
    """The backward solve's settings once the forward solve's are known (defaults filled in, all checked)."""

    def __init__(self, method, rtol, atol, options, norm):
        self.method, self.rtol, self.atol, self.options, self.norm = method, rtol, atol, options, norm


class BacksolveAdjoint(Adjoint):
    """The adjoint method: ``ndode.solve(func, y0, t, adjoint=BacksolveAdjoint(...))``.

    The forward solve runs without building a graph; ``backward()`` solves the
    adjoint system backwards in time (Chen et al. 2018, Algorithm 1), so memory
    does not grow with the number of steps. ``rtol``, ``atol``, ``method`` and
    ``options`` set the backward solve (default: the forward solve's; the
    forward options only carry over with the forward method). ``options`` take
    the solver options plus ``norm``: ``"seminorm"`` (default; the
    parameter-adjoint channels are left out of the error estimate, Kidger et
    al. 2021) or ``"full"``. ``params`` are the tensors to differentiate
    (default: the parameters of ``func``, an ``nn.Module``, that require grad).
    Gradients also reach ``y0`` and every entry of ``t``.
    """

    def __init__(self, *, rtol: float | None = None, atol: float | None = None, method: str | None = None,
                 options: dict | None = None, params: Sequence[torch.Tensor] | None = None):
        # everything that does not depend on the forward solve is checked here, before any work
        self.rtol = None if rtol is None else _check_tol("adjoint_rtol", rtol)
        self.atol = None if atol is None else _check_tol("adjoint_atol", atol)
        if method is not None:
            get_method(method, "adjoint_method")
        self.method = method
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"adjoint_options must be a dict or None, got {type(options).__name__}")
        self.options = None if options is None else dict(options)
        self.norm = DEFAULT_ADJOINT_NORM if self.options is None else self.options.pop("norm", DEFAULT_ADJOINT_NORM)
        if not (callable(self.norm) or self.norm in ADJOINT_NORMS):
            raise ValueError(f"adjoint_options['norm'] must be one of {', '.join(ADJOINT_NORMS)} or a callable, "
                             f"got {self.norm!r}")
        if params is not None:
            _check_adjoint_params(None, params)
        self.params = params

    def __repr__(self):
        opts = dict(self.options or {}, norm=self.norm)
        return (f"BacksolveAdjoint(rtol={self.rtol}, atol={self.atol}, method={self.method!r}, options={opts}"
                + (f", params=<{len(self.params)} tensors>)" if self.params is not None else ")"))

    def _bind(self, plan) -> _Bound:
        method = plan.method.name if self.method is None else self.method
        m = get_method(method, "adjoint_method")
        if self.options is None:
            options = dict(plan.options) if method == plan.method.name else {}
        else:
            options = m.check_options(self.options, "adjoint_options", also=("norm",))
        rtol = plan.rtol if self.rtol is None else self.rtol
        atol = plan.atol if self.atol is None else self.atol
        if m.adaptive and "step_size" not in options and rtol == 0 and atol == 0:
            raise ValueError("adjoint_rtol and adjoint_atol are both 0; the adaptive backward solve needs a positive tolerance")
        if plan.norm_reduce is not None and not m.own_steps:
            raise ValueError(f"norm_reduce applies to ndode's Runge-Kutta methods; adjoint_method={m.name!r} chooses "
                             "its own backward steps, so data-parallel processes cannot share its error norm")
        return _Bound(m, rtol, atol, options, self.norm)

    def run(self, plan, y0) -> Solution:
        params = _check_adjoint_params(plan.func, self.params)
        bound = self._bind(plan)
        ys = _Adjoint.apply(plan, bound, plan.ts, plan.packing.pack(y0), *params)
        return plan.solution(ys)

"""One calling convention for ndode and its peers: ``make_solver(peer, func, ...) -> run(y0, t) -> ys``.

Peers are imported lazily, here and nowhere in ``ndode``. Every adapter
returns the solution at every output time as a tensor ``[len(t), *y0.shape]``
so errors can be compared directly. ``count_nfe`` runs a solve once with a
counted ``func`` (untimed); timed runs use the bare ``func``.

Settings chosen to make the comparisons like for like:

* torchode uses its ``IntegralController`` (the same I-controller with
  safety 0.9 and growth in [0.2, 10] that ndode and torchdiffeq use), not its
  default PID controller; states are ``[batch, features]`` and every sample
  gets its own step size (torchode's design).
* torchode has no classical RK4; ``_TorchodeRK4`` declares the Kutta tableau
  through torchode's own ``ExplicitRungeKutta`` and runs it under its
  ``FixedStepController``.
* SciPy gets the same torch ``func`` behind a numpy adapter (what a PyTorch
  user would write), so its time includes the numpy↔torch conversions.
* torchdiffeq's ``rk4`` is the 3/8-rule variant; it has the same four stages
  per step, which is what the overhead benchmark compares.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import numpy as np
import torch

import ndode

from .timing import CallCounter

__all__ = ["PEERS", "available", "make_solver", "count_nfe", "SCIPY_METHODS", "TORCHODE_METHODS", "TORCHDIFFEQ_METHODS"]

PEERS = ("ndode", "torchdiffeq", "torchode", "scipy")
SCIPY_METHODS = {"dopri5": "RK45", "bosh3": "RK23", "dop853": "DOP853"}
TORCHODE_METHODS = ("dopri5", "tsit5", "rk4")
TORCHDIFFEQ_METHODS = ("dopri5", "bosh3", "rk4", "euler", "midpoint", "heun")

_MODULE = {"ndode": "ndode", "torchdiffeq": "torchdiffeq", "torchode": "torchode", "scipy": "scipy.integrate"}


def available(peer: str) -> bool:
    """Whether ``peer`` can be imported (peers are the optional ``bench`` extra)."""
    try:
        return importlib.util.find_spec(_MODULE[peer].split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def supports(peer: str, method: str) -> bool:
    if peer == "ndode":
        return method in ndode.METHODS
    if peer == "torchdiffeq":
        return method in TORCHDIFFEQ_METHODS
    if peer == "torchode":
        return method in TORCHODE_METHODS
    if peer == "scipy":
        return method in SCIPY_METHODS
    raise ValueError(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")


def make_solver(
    peer: str,
    func: Callable,
    method: str,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    step_size: float | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function ``run(y0, t) -> ys`` that solves with ``peer``; all set-up happens here, not in ``run``."""
    if not supports(peer, method):
        raise ValueError(f"{peer} has no method {method!r}")
    return {"ndode": _ndode, "torchdiffeq": _torchdiffeq, "torchode": _torchode, "scipy": _scipy}[peer](
        func, method, rtol, atol, step_size
    )


def count_nfe(peer, func, method, y0, t, rtol=1e-7, atol=1e-9, step_size=None) -> tuple[torch.Tensor, int]:
    """Solve once with a counted ``func``; returns ``(ys, number of func calls)``."""
    counter = CallCounter(func)
    ys = make_solver(peer, counter, method, rtol, atol, step_size)(y0, t)
    return ys, counter.n


# --------------------------------------------------------------------------- adapters


def _ndode(func, method, rtol, atol, step_size):
    options = None if step_size is None else {"step_size": step_size}

    def run(y0, t):
        return ndode.solve(func, y0, t, rtol=rtol, atol=atol, method=method, options=options).ys

    return run


def _torchdiffeq(func, method, rtol, atol, step_size):
    import torchdiffeq

    options = None if step_size is None else {"step_size": step_size}

    def run(y0, t):
        return torchdiffeq.odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)

    return run


def _torchode_rk4_class():
    import torchode
    from torchode.interpolation import ThirdOrderPolynomialInterpolation
    from torchode.single_step_methods.runge_kutta import ButcherTableau, ExplicitRungeKutta

    class _TorchodeRK4(ExplicitRungeKutta):
        """Kutta's classical RK4 in torchode's own ERK machinery (fixed steps only)."""

        TABLEAU = ButcherTableau.from_lists(
            c=[0.0, 0.5, 0.5, 1.0],
            a=[[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
            b=[1 / 6, 1 / 3, 1 / 3, 1 / 6],
            b_low_order=[1.0, 0.0, 0.0, 0.0],  # never used: the fixed-step controller ignores errors
        )

        def __init__(self, term=None):
            super().__init__(term, _TorchodeRK4.TABLEAU)

        def convergence_order(self):
            return 4

        def build_interpolation(self, data):
            return ThirdOrderPolynomialInterpolation.from_k(data.t0, data.dt, data.y0, data.y1, data.k)

    return torchode, _TorchodeRK4


def _torchode(func, method, rtol, atol, step_size):
    torchode, rk4 = _torchode_rk4_class()
    term = torchode.ODETerm(func)
    step = {"dopri5": torchode.Dopri5, "tsit5": torchode.Tsit5, "rk4": rk4}[method](term=term)
    if step_size is None:
        if method == "rk4":
            raise ValueError("torchode rk4 needs step_size")
        controller = torchode.IntegralController(atol=atol, rtol=rtol, term=term)
    else:
        controller = torchode.FixedStepController()
    solver = torchode.AutoDiffAdjoint(step, controller)

    def run(y0, t):
        shape = y0.shape
        y = y0.reshape(shape[0], -1) if y0.ndim != 2 else y0
        batch = y.shape[0]
        problem = torchode.InitialValueProblem(y0=y, t_eval=t.to(y.dtype).expand(batch, -1))
        dt0 = None if step_size is None else torch.full((batch,), step_size, dtype=y.dtype, device=y.device)
        sol = solver.solve(problem, dt0=dt0)
        run.last_stats = sol.stats  # per-sample step counts (n_steps, n_accepted)
        # torchode returns [batch, len(t), features]; the others [len(t), batch, features]
        return sol.ys.transpose(0, 1).reshape(len(t), *shape)

    run.last_stats = None
    return run


def _scipy(func, method, rtol, atol, step_size):
    from scipy.integrate import solve_ivp

    if step_size is not None:
        raise ValueError("scipy has no fixed-step Runge–Kutta solver")
    sp_method = SCIPY_METHODS[method]

    def run(y0, t):
        shape, dtype = y0.shape, y0.dtype

        def rhs(s, y):
            with torch.no_grad():
                return func(torch.tensor(s, dtype=dtype), torch.from_numpy(y).to(dtype).view(shape)).reshape(-1).double().numpy()

        tt = t.detach().double().numpy()
        sol = solve_ivp(rhs, (tt[0], tt[-1]), y0.detach().double().reshape(-1).numpy(), method=sp_method,
                        t_eval=tt, rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"scipy {sp_method} failed: {sol.message}")
        return torch.from_numpy(np.ascontiguousarray(sol.y.T)).to(dtype).reshape(len(tt), *shape)

    return run

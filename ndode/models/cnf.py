"""Continuous normalizing flows (Chen et al. 2018, §4; Grathwohl et al. 2019, FFJORD).

A CNF moves points by ``dz/dt = f(z, t)`` and their log-density by the
instantaneous change of variables, ``d log p(z(t))/dt = −tr(∂f/∂z)``. The pair
``(z, log p)`` is one tuple state of the solver. Base ``N(0, base_var·I)`` at
``t = 0``, data at ``t = t1``:

* sampling integrates ``(z₀, log p₀(z₀))`` forward to ``t1``;
* the log-likelihood of ``x`` integrates ``(x, 0)`` backward to ``0`` and reads
  ``log p(x) = log p₀(z(0)) − Δ(0)``, where ``Δ`` obeys the same ``−tr`` equation
  (so ``Δ(0) = ∫₀^{t1} tr dt``). This is torchdiffeq's ``examples/cnf.py``
  arrangement (t from t1 to t0).

Two dynamics:

* :class:`HyperPlanarDynamics`, the paper's CNF: ``f = (1/M) Σₙ σₙ(t) uₙ tanh(wₙᵀz + bₙ)``
  with ``w, b, u`` and the gate ``σ`` produced from ``t`` by a small
  hypernetwork (as torchdiffeq's ``examples/cnf.py``; it too averages over the
  M units, which keeps the initial speed independent of M). Its trace has a
  closed form: ``Σₙ (σₙ/M)(uₙ·wₙ)(1 − tanh²(wₙᵀz + bₙ))``.
* :class:`ConcatMLPDynamics`, FFJORD-style: an MLP with ``t`` concatenated to the
  input of every layer. Its trace is exact (one vector–Jacobian product per
  dimension: cheap in 2-D) or Hutchinson's ``εᵀ(∂f/∂z)ε`` with one probe ``ε``
  per sample held fixed for a whole solve (FFJORD §3.1), set by :meth:`CNF.set_probe`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import ndode

from .planar import standard_normal_logpdf

__all__ = ["HyperPlanarDynamics", "ConcatMLPDynamics", "CNF", "hutchinson_trace", "exact_trace"]


def exact_trace(f: torch.Tensor, z: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``tr(∂f/∂z)`` per sample, by one vector–Jacobian product per dimension (f and z: ``[N, d]``)."""
    tr = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for i in range(z.shape[1]):
        g = torch.autograd.grad(f[:, i].sum(), z, create_graph=create_graph, retain_graph=True)[0]
        tr = tr + g[:, i]
    return tr


def hutchinson_trace(f: torch.Tensor, z: torch.Tensor, probe: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """Hutchinson's unbiased estimate ``εᵀ(∂f/∂z)ε`` per sample (one vector–Jacobian product)."""
    g = torch.autograd.grad(f, z, probe, create_graph=create_graph)[0]
    return (g * probe).sum(-1)


class HyperPlanarDynamics(nn.Module):
    """The paper's CNF dynamics with M units; parameters from a hypernetwork of ``t``."""

    def __init__(self, dim: int = 2, width: int = 32, hidden: int = 32):
        super().__init__()
        if width < 1:
            raise ValueError(f"width={width!r} must be >= 1")
        self.dim, self.width = dim, width
        self.hyper = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                   nn.Linear(hidden, width * (2 * dim + 2)))

    def params(self, t: torch.Tensor):
        p = self.hyper(t.reshape(1, 1)).reshape(-1)
        m, d = self.width, self.dim
        w = p[: m * d].view(m, d)
        u = p[m * d : 2 * m * d].view(m, d)
        b = p[2 * m * d : 2 * m * d + m]
        gate = torch.sigmoid(p[2 * m * d + m :]) / m
        return w, u, b, gate

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dz/dt, tr ∂f/∂z)``, both in closed form."""
        w, u, b, gate = self.params(t)
        a = torch.tanh(z @ w.t() + b)  # [N, M]
        f = (a * gate) @ u
        tr = ((1 - a * a) * gate) @ (u * w).sum(-1)
        return f, tr


class ConcatMLPDynamics(nn.Module):
    """FFJORD-style dynamics: an MLP (tanh) with ``t`` concatenated to every layer's input."""

    def __init__(self, dim: int = 2, hidden: int = 64, layers: int = 3):
        super().__init__()
        if hidden < 1 or layers < 1:
            raise ValueError(f"hidden={hidden!r} and layers={layers!r} must be >= 1")
        self.dim = dim
        sizes = [dim] + [hidden] * layers + [dim]
        self.linears = nn.ModuleList(nn.Linear(a + 1, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.probe: torch.Tensor | None = None  # None: exact trace; a tensor: Hutchinson with this probe

    def velocity(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(1, 1).to(z.dtype).expand(z.shape[0], 1)
        h = z
        for i, lin in enumerate(self.linears):
            h = lin(torch.cat([h, tt], dim=1))
            if i < len(self.linears) - 1:
                h = torch.tanh(h)
        return h

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Under the adjoint's forward solve autograd is off; the trace needs it inside, and needs a graph
        # through it only when the caller will differentiate (the adjoint's backward dynamics do).
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            zz = z if z.requires_grad else z.detach().requires_grad_(True)
            f = self.velocity(t, zz)
            if self.probe is None:
                tr = exact_trace(f, zz, create_graph)
            else:
                tr = hutchinson_trace(f, zz, self.probe, create_graph)
        if not create_graph:
            f, tr = f.detach(), tr.detach()
        return f, tr


class CNF(nn.Module):
    """A continuous normalizing flow: ``dynamics`` on ``t ∈ [0, t1]``, base ``N(0, base_var·I)`` at ``t = 0``.

    ``solver`` holds the keyword arguments of :func:`ndode.solve` (method, tolerances, ``adjoint``: an
    ``ndode.Adjoint`` such as ``ndode.BacksolveAdjoint()``, or None). ``adjoint=False`` in a call solves without
    it (an evaluation that nothing differentiates).
    After each solve ``self.last`` holds its :class:`ndode.SolverStats` (NFE forward and, once
    ``backward()`` has run through an adjoint solve, backward).
    """

    def __init__(self, dynamics: nn.Module, t1: float = 1.0, base_var: float = 1.0, solver: dict | None = None):
        super().__init__()
        if not t1 > 0:
            raise ValueError(f"t1={t1!r} must be > 0")
        self.dynamics, self.t1, self.base_var = dynamics, float(t1), float(base_var)
        self.dim = dynamics.dim
        self.solver = dict(solver or {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5})
        adjoint = self.solver.get("adjoint")
        if adjoint is not None and not isinstance(adjoint, ndode.Adjoint):
            raise TypeError(f"solver['adjoint']={adjoint!r}: pass an adjoint method, e.g. ndode.BacksolveAdjoint(), "
                            "or None for direct backpropagation")
        self.last = None

    def forward(self, t, state):
        """The ODE function of the tuple state ``(z, log p)``: ``(f, −tr ∂f/∂z)``."""
        z, _ = state
        f, tr = self.dynamics(t, z)
        return f, -tr

    def set_probe(self, probe: torch.Tensor | None) -> None:
        """Hutchinson probe for the next solves (``None``: exact trace). Only FFJORD-style dynamics estimate."""
        if not hasattr(self.dynamics, "probe"):
            if probe is not None:
                raise ValueError(f"{type(self.dynamics).__name__} has a closed-form trace; it takes no probe")
            return
        self.dynamics.probe = probe

    def _solve(self, state, times, adjoint: bool):
        """One solve with ``self.solver``; ``adjoint=False``: without its adjoint."""
        kw = self.solver if adjoint else {**self.solver, "adjoint": None}
        t = torch.tensor(times, dtype=state[0].dtype, device=state[0].device)
        sol = ndode.solve(self, state, t, **kw)
        self.last = sol.stats
        return sol

    def base_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        p = next(self.parameters())
        z = torch.randn(n, self.dim, generator=generator, dtype=p.dtype) * math.sqrt(self.base_var)
        return z.to(p.device)

    def transform(self, z0: torch.Tensor, adjoint: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Base points to data space, with the model's log-density at the results."""
        lp0 = standard_normal_logpdf(z0, self.base_var)
        zs, lps = self._solve((z0, lp0), [0.0, self.t1], adjoint).ys
        return zs[-1], lps[-1]

    def sample(self, n: int, generator: torch.Generator | None = None, adjoint: bool = True):
        return self.transform(self.base_sample(n, generator), adjoint)

    def log_prob(self, x: torch.Tensor, adjoint: bool = True) -> torch.Tensor:
        zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        zs, deltas = self._solve((x, zero), [self.t1, 0.0], adjoint).ys
        return standard_normal_logpdf(zs[-1], self.base_var) - deltas[-1]

    def partial(self, z: torch.Tensor, grid: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Base samples ``z`` moved to ``t = fraction·t1``, and the log-density of ``z(t)`` on ``grid``."""
        t = fraction * self.t1
        if t == 0:
            return z, standard_normal_logpdf(grid, self.base_var)
        lp0 = standard_normal_logpdf(z, self.base_var)
        zt = self._solve((z, lp0), [0.0, t], False).ys[0][-1]
        zero = torch.zeros(grid.shape[0], dtype=grid.dtype, device=grid.device)
        zs, deltas = self._solve((grid, zero), [t, 0.0], False).ys
        return zt, standard_normal_logpdf(zs[-1], self.base_var) - deltas[-1]

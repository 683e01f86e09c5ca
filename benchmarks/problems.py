"""The test problems of the benchmarks, each a small ``torch.nn.Module`` called as ``func(t, y)``."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["MLPODE", "VanDerPol", "LotkaVolterra", "Linear", "Oscillators", "WORK_PRECISION_PROBLEMS", "reference_solution"]


class MLPODE(nn.Module):
    """dy/dt = W2 tanh(W1 y + b1) + b2: the "neural" right-hand side, seeded.

    ``scale`` multiplies the default initial weights so the dynamics are not
    trivially slow (about a hundred adaptive steps over [0, 10] at rtol 1e-6).
    """

    def __init__(self, dim: int = 2, hidden: int = 50, *, seed: int = 0, scale: float = 3.0, layers: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        widths = [dim] + [hidden] * layers + [dim]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        with torch.no_grad():
            for lin in self.linears:
                bound = 1.0 / math.sqrt(lin.in_features)
                lin.weight.copy_(torch.empty_like(lin.weight).uniform_(-bound, bound, generator=g) * scale)
                lin.bias.copy_(torch.empty_like(lin.bias).uniform_(-bound, bound, generator=g))

    def forward(self, t, y):
        # plain iteration: slicing a ModuleList builds a new one per call, which would inflate func's cost
        *hidden, last = self.linears
        for lin in hidden:
            y = torch.tanh(lin(y))
        return last(y)


class VanDerPol(nn.Module):
    """x'' - μ(1 - x²)x' + x = 0 as a first-order system; μ = 1 is non-stiff."""

    y0 = (2.0, 0.0)
    t1 = 10.0

    def __init__(self, mu: float = 1.0):
        super().__init__()
        self.mu = mu

    def forward(self, t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, self.mu * (1 - x * x) * v - x], dim=-1)


class LotkaVolterra(nn.Module):
    """Predator–prey: x' = αx − βxy, y' = δxy − γy (α=1.5, β=1, γ=3, δ=1)."""

    y0 = (1.0, 1.0)
    t1 = 10.0

    def __init__(self, alpha=1.5, beta=1.0, gamma=3.0, delta=1.0):
        super().__init__()
        self.alpha, self.beta, self.gamma, self.delta = alpha, beta, gamma, delta

    def forward(self, t, y):
        x, z = y[..., 0], y[..., 1]
        return torch.stack([self.alpha * x - self.beta * x * z, self.delta * x * z - self.gamma * z], dim=-1)


class Linear(nn.Module):
    """y' = A y in 10 dimensions: damped rotations with a non-normal coupling, seeded."""

    t1 = 5.0

    def __init__(self, dim: int = 10, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        skew = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        skew = skew - skew.T
        upper = torch.triu(torch.randn(dim, dim, generator=g, dtype=torch.float64), diagonal=1) * 0.3
        a = skew - 0.3 * torch.eye(dim, dtype=torch.float64) + upper
        self.register_buffer("A", a)
        self.y0 = tuple(torch.randn(dim, generator=g, dtype=torch.float64).tolist())

    def forward(self, t, y):
        return y @ self.A.to(y.dtype).T


class Oscillators(nn.Module):
    """Harmonic oscillators x'' = -ω² x, one ω per batch entry; state [batch, 2] = (x, x')."""

    def __init__(self, omegas):
        super().__init__()
        self.register_buffer("w2", torch.tensor([w * w for w in omegas], dtype=torch.float64))
        self.omegas = tuple(float(w) for w in omegas)

    def forward(self, t, y):
        return torch.stack([y[:, 1], -self.w2.to(y.dtype) * y[:, 0]], dim=-1)

    def y0(self, dtype=torch.float64):
        return torch.tensor([[1.0, 0.0]] * len(self.omegas), dtype=dtype)

    def exact(self, t: torch.Tensor) -> torch.Tensor:
        """x = cos(ωt), x' = -ω sin(ωt); shaped [len(t), batch, 2]."""
        w = torch.tensor(self.omegas, dtype=torch.float64)
        wt = t.double()[:, None] * w[None, :]
        return torch.stack([torch.cos(wt), -w * torch.sin(wt)], dim=-1)


WORK_PRECISION_PROBLEMS = {
    "van_der_pol": VanDerPol,
    "lotka_volterra": LotkaVolterra,
    "linear10": Linear,
}


def reference_solution(func: nn.Module, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SciPy DOP853 at rtol = atol = 1e-13 (the work–precision reference), shaped like ``[len(t), *y0.shape]``."""
    from scipy.integrate import solve_ivp

    shape = y0.shape

    def rhs(s, y):
        with torch.no_grad():
            return func(torch.tensor(s, dtype=torch.float64), torch.from_numpy(y).view(shape)).reshape(-1).numpy()

    tt = t.double().numpy()
    sol = solve_ivp(rhs, (tt[0], tt[-1]), y0.double().reshape(-1).numpy(), method="DOP853", t_eval=tt,
                    rtol=1e-13, atol=1e-13)
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    return torch.from_numpy(np.ascontiguousarray(sol.y.T)).reshape(len(tt), *shape)

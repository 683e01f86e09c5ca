"""Planar normalizing flows (Rezende & Mohamed 2015, §4.1 and Appendix A.1).

A planar layer maps ``z ↦ z + û h(wᵀz + b)`` with ``h = tanh``; its Jacobian
determinant is ``1 + ûᵀ ψ(z)``, ``ψ(z) = h'(wᵀz + b) w``. The layer is
invertible when ``wᵀû ≥ −1``; we enforce it (strictly) by the paper's
reparameterisation ``û = u + (m(wᵀu) − wᵀu) w / ‖w‖²`` with
``m(x) = −1 + softplus(x)``, so ``wᵀû = m(wᵀu) > −1``.

The inverse has no closed form, but it is one monotone scalar equation:
with ``α = wᵀz`` and ``c = wᵀû``, ``wᵀy = α + c·h(α + b)``, whose left side
is strictly increasing in ``α`` (slope ``1 + c·h' > 0``); we solve it by
bisection on the bracket ``[wᵀy − |c|, wᵀy + |c|]`` and recover
``z = y − û h(α + b)``.

:class:`PlanarFlow` is a stack of K layers used in one of two orientations:

* ``generative`` (density matching, Figure 4): base samples pass through the
  layers, so sampling and its log-density are closed form;
* ``normalizing`` (maximum likelihood, Figure 5): data pass through the layers
  to the base, so the log-likelihood is closed form, and sampling uses the
  bisection inverse.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["PlanarLayer", "PlanarFlow", "constrain_u", "planar_forward", "planar_inverse", "standard_normal_logpdf"]


MARGIN = 1e-3  # wᵀû ≥ −1 + MARGIN (see constrain_u)


def standard_normal_logpdf(z: torch.Tensor, var: float = 1.0) -> torch.Tensor:
    """log N(z; 0, var·I), summed over the last dimension."""
    d = z.shape[-1]
    return -0.5 * (z * z).sum(-1) / var - 0.5 * d * math.log(2 * math.pi * var)


def constrain_u(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``û = u + (m(wᵀu) − wᵀu) w/‖w‖²``, ``m(x) = −1 + softplus(x)``, so ``wᵀû > −1`` (rows: layers).

    ``m`` is floored at ``−1 + 1e-3``: for ``wᵀu ≲ −30`` softplus underflows against 1 and round-off would
    otherwise leave ``wᵀû = −1`` exactly, a zero Jacobian determinant where ``tanh' = 1``."""
    wu = (w * u).sum(-1, keepdim=True)
    m = (-1.0 + F.softplus(wu)).clamp_min(-1.0 + MARGIN)
    return u + (m - wu) * w / (w * w).sum(-1, keepdim=True).clamp_min(1e-12)


def planar_forward(z, w, u_hat, b, wu=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z + û tanh(wᵀz + b), log|1 + (1 − tanh²) wᵀû|)`` for a batch ``z`` ``[N, d]``."""
    a = torch.tanh(z @ w + b)
    y = z + a[:, None] * u_hat
    wu = w @ u_hat if wu is None else wu
    # 1 + ûᵀψ = 1 + (1 − a²) wᵀû > 0 by the constraint; the clamp only guards round-off
    return y, torch.log((1 + (1 - a * a) * wu).abs().clamp_min(1e-12))


@torch.no_grad()
def planar_inverse(y, w, u_hat, b, iters: int = 80) -> torch.Tensor:
    """The ``z`` with ``planar_forward(z)[0] == y`` (bisection on ``α = wᵀz``; see the module docstring)."""
    c = (w @ u_hat).to(torch.float64)
    s = (y @ w).to(torch.float64)
    b = b.to(torch.float64)
    lo, hi = s - c.abs() - 1e-6, s + c.abs() + 1e-6
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        above = mid + c * torch.tanh(mid + b) > s
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    alpha = 0.5 * (lo + hi)
    return y - torch.tanh(alpha + b).to(y.dtype)[:, None] * u_hat


def near_identity_init(shape, w_scale: float = 0.5, noise: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, u)`` with ``m(wᵀu) = 0``, so ``û`` is only ``u``'s small part orthogonal to ``w``: each layer starts
    within ``noise`` of the identity. (Small random ``w, u`` would not: ``m(0) = −1 + log 2``, so every
    layer would start as a contraction by ``log 2`` along ``w``, and 32 of them collapse the base.)"""
    w = torch.randn(shape) * w_scale
    u = w * math.log(math.e - 1) / (w * w).sum(-1, keepdim=True) + torch.randn(shape) * noise
    return w, u


class PlanarLayer(nn.Module):
    """One planar layer ``z + û tanh(wᵀz + b)`` with the invertibility constraint on ``u``."""

    def __init__(self, dim: int):
        super().__init__()
        w, u = near_identity_init((dim,))
        self.w, self.u = nn.Parameter(w), nn.Parameter(u)
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> torch.Tensor:
        return constrain_u(self.w, self.u)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, log|det ∂y/∂z|)`` for a batch ``z`` of shape ``[N, dim]``."""
        return planar_forward(z, self.w, self.u_hat(), self.b)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return planar_inverse(y, self.w, self.u_hat(), self.b)


class PlanarFlow(nn.Module):
    """K planar layers on a Gaussian base ``N(0, base_var·I)``.

    ``orientation="generative"``: ``x = f_K ∘ … ∘ f_1(z)`` (Figure 4);
    ``"normalizing"``: ``z = f_K ∘ … ∘ f_1(x)`` (Figure 5). Either way
    :meth:`log_prob` and :meth:`sample` are both available. The layers' parameters
    are stacked (``w``, ``u``: ``[K, dim]``, ``b``: ``[K]``) so the constraint is one
    batched computation per pass, not K small ones.
    """

    def __init__(self, dim: int = 2, layers: int = 8, orientation: str = "generative", base_var: float = 1.0):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers={layers!r} must be >= 1")
        if orientation not in ("generative", "normalizing"):
            raise ValueError(f"orientation={orientation!r} is not one of ['generative', 'normalizing']")
        self.dim, self.orientation, self.base_var, self.K = dim, orientation, base_var, layers
        w, u = near_identity_init((layers, dim))
        self.w, self.u = nn.Parameter(w), nn.Parameter(u)
        self.b = nn.Parameter(torch.zeros(layers))

    def _layers(self):
        """``(w_k, û_k, b_k, w_kᵀû_k)`` for k = 1..K."""
        u = constrain_u(self.w, self.u)
        wu = (self.w * u).sum(-1)
        return list(zip(self.w, u, self.b, wu))

    def _through(self, z, layers):
        logdet = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for w, u, b, wu in layers:
            z, ld = planar_forward(z, w, u, b, wu)
            logdet = logdet + ld
        return z, logdet

    def _back(self, y, layers):
        for w, u, b, _ in reversed(layers):
            y = planar_inverse(y, w, u, b)
        return y

    def base_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=self.w.dtype) * math.sqrt(self.base_var)
        return z.to(self.w.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples and the flow's log-density at them."""
        return self.transform(self.base_sample(n, generator))

    def transform(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Base points ``z`` to data space, with the log-density of the result."""
        lp0 = standard_normal_logpdf(z, self.base_var)
        layers = self._layers()
        if self.orientation == "generative":
            x, logdet = self._through(z, layers)
            return x, lp0 - logdet
        x = self._back(z, layers)
        _, logdet = self._through(x, layers)
        return x, lp0 + logdet

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        layers = self._layers()
        if self.orientation == "normalizing":
            z, logdet = self._through(x, layers)
            return standard_normal_logpdf(z, self.base_var) + logdet
        z = self._back(x, layers)
        _, logdet = self._through(z, layers)
        return standard_normal_logpdf(z, self.base_var) - logdet

    @torch.no_grad()
    def partial(self, z: torch.Tensor, grid: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Base samples ``z`` after the first ``round(fraction·K)`` layers of the base-to-data direction, and the
        log-density of that intermediate distribution on ``grid`` (Figure 5's 0, 20, ..., 100 %)."""
        layers = self._layers()
        # base-to-data order, and whether each step is the layer itself or its inverse
        gen = [(l, False) for l in layers] if self.orientation == "generative" else [(l, True) for l in layers[::-1]]
        k = round(fraction * len(gen))
        for (w, u, b, wu), inv in gen[:k]:
            z = planar_inverse(z, w, u, b) if inv else planar_forward(z, w, u, b, wu)[0]
        y = grid  # back to the base through the first k steps, collecting log-determinants
        logdet = torch.zeros(grid.shape[0], dtype=grid.dtype, device=grid.device)
        for (w, u, b, wu), inv in reversed(gen[:k]):
            if inv:
                y, ld = planar_forward(y, w, u, b, wu)
                logdet = logdet + ld
            else:
                y = planar_inverse(y, w, u, b)
                logdet = logdet - planar_forward(y, w, u, b, wu)[1]
        return z, standard_normal_logpdf(y, self.base_var) + logdet

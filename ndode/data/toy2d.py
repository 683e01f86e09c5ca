"""Two-dimensional data sets and unnormalised target densities for the CNF experiments.

Data sets (samplers ``name(n, rng) -> float32 array [n, 2]``, ``rng`` a ``numpy.random.Generator``):

* ``circles`` and ``moons`` (the paper's Figure 5): the same constructions as scikit-learn's
  ``make_circles`` / ``make_moons`` (sklearn is not a dependency), with the noise of torchdiffeq's
  ``examples/cnf.py``: ``circles`` = ``make_circles(noise=0.06, factor=0.5)``; ``moons`` =
  ``make_moons(noise=0.06)`` shifted by ``(−0.5, −0.25)`` so it is centred like the circles.
* ``8gaussians``, ``checkerboard``, ``pinwheel``, ``2spirals``, ``rings``: the definitions of
  FFJORD's ``lib/toy_data.py`` (Grathwohl et al. 2019), written again here with an explicit generator.

Targets (energies ``U(z)``, unnormalised density ``exp(−U)``): U1–U4 of Rezende & Mohamed (2015), Table 1.
Only U1 is a density on R²: exp(−U) of U2–U4 does not decay along z₁, so KL(q‖p) has no lower bound there
(a flow lowers ``E_q[log q + U]`` without end by spreading mass along z₁; issue 24). The targets a run may use
(:data:`TARGETS`) are U1 and the *confined* ``U2c``, ``U3c``, ``U4c``: the energy plus a smooth wall along z₁,
:func:`wall` (our choice: the paper does not name its targets, Rezende & Mohamed's are not normalisable). The raw
energies stay in :data:`RAW_ENERGIES` (tests show they do not normalise). Each target's ``log Z`` is computed by
quadrature (:func:`log_z`), so a run reports the true ``KL(q‖p) = E_q[log q + U] + log Z ≥ 0``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DATASETS", "TARGETS", "RAW_ENERGIES", "PLOT_BOX", "QUAD_BOX", "WALL_AT", "WALL_SCALE", "sample_data",
           "energy", "wall", "log_z", "quadrature_grid", "grid_kl", "outside_box", "make_circles", "make_moons",
           "check_name"]

PLOT_BOX = 4.0  # Figure 4 is drawn on [−4, 4]² (Rezende & Mohamed's plots); mass outside it is reported
QUAD_BOX = 6.0  # log Z and the forward KL integrate over [−6, 6]²: every target's mass outside it is < 1e-6
QUAD_N = 600  # log Z: midpoint rule, 600² cells (h = 0.02; the smooth targets converge fast: 150² agrees to 1e-7)
# The wall that confines U2–U4 along z₁ (our choice): ½ ρ(z₁)², ρ = softplus((z₁ − a)/s) + softplus((−z₁ − a)/s)
# with a = 3, s = 0.3. Smooth (C^∞); inside |z₁| < a − 3s it adds < 0.0012 nats; at |z₁| = 4 the density has fallen
# by e^−5.7, so the confined targets' mass beyond |z₁| = 4 is ~1e-4 and the picture inside the plotted box is
# Rezende & Mohamed's up to |z₁| ≈ 3 (1.5 periods of the sine). U4's lower branch reaches z₂ ≈ −4 near z₁ = 3, so
# 2.2 % of U4c's own mass lies below the plotted box (the report prints each target's share beside the flows').
WALL_AT = 3.0
WALL_SCALE = 0.3


def _shuffle(x: np.ndarray, rng) -> np.ndarray:
    return x[rng.permutation(len(x))]


def make_circles(n: int, rng, noise: float = 0.06, factor: float = 0.5) -> np.ndarray:
    """scikit-learn's ``make_circles``: n//2 points on the unit circle, the rest on radius ``factor``,
    evenly spaced in angle (endpoint excluded), plus N(0, noise²) noise, shuffled."""
    n_out = n // 2
    n_in = n - n_out
    a_out = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
    a_in = np.linspace(0, 2 * np.pi, n_in, endpoint=False)
    x = np.concatenate([np.stack([np.cos(a_out), np.sin(a_out)], 1),
                        factor * np.stack([np.cos(a_in), np.sin(a_in)], 1)])
    return _shuffle(x + noise * rng.standard_normal(x.shape), rng)


def make_moons(n: int, rng, noise: float = 0.06) -> np.ndarray:
    """scikit-learn's ``make_moons``: n//2 points on the upper half circle, the rest on the lower one
    shifted to ``(1 − cos, 1 − sin − 0.5)``, angles evenly spaced over [0, π], plus N(0, noise²), shuffled."""
    n_out = n // 2
    n_in = n - n_out
    a_out = np.linspace(0, np.pi, n_out)
    a_in = np.linspace(0, np.pi, n_in)
    x = np.concatenate([np.stack([np.cos(a_out), np.sin(a_out)], 1),
                        np.stack([1 - np.cos(a_in), 1 - np.sin(a_in) - 0.5], 1)])
    return _shuffle(x + noise * rng.standard_normal(x.shape), rng)


def _circles(n, rng):
    return make_circles(n, rng, noise=0.06, factor=0.5)


def _moons(n, rng):
    return make_moons(n, rng, noise=0.06) + np.array([-0.5, -0.25])


def _8gaussians(n, rng):
    s = 1 / math.sqrt(2)
    centers = 4.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])
    x = 0.5 * rng.standard_normal((n, 2)) + centers[rng.integers(0, 8, n)]
    return x / 1.414


def _checkerboard(n, rng):
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
    return 2 * np.stack([x1, x2], 1)


def _pinwheel(n, rng):
    arms, rate = 5, 0.25
    per = n // arms
    labels = np.repeat(np.arange(arms), per)
    labels = np.concatenate([labels, rng.integers(0, arms, n - len(labels))])  # n need not divide by 5
    feats = rng.standard_normal((n, 2)) * np.array([0.3, 0.1])  # radial, tangential std
    feats[:, 0] += 1.0
    angles = np.linspace(0, 2 * np.pi, arms, endpoint=False)[labels] + rate * np.exp(feats[:, 0])
    c, s = np.cos(angles), np.sin(angles)
    x = np.stack([feats[:, 0] * c + feats[:, 1] * s, -feats[:, 0] * s + feats[:, 1] * c], 1)
    return 2 * _shuffle(x, rng)


def _2spirals(n, rng):
    h = n // 2
    r = np.sqrt(rng.random((n - h, 1))) * 540 * (2 * np.pi) / 360
    arm = np.hstack([-np.cos(r) * r + rng.random((n - h, 1)) * 0.5, np.sin(r) * r + rng.random((n - h, 1)) * 0.5])
    x = np.vstack([arm, -arm[:h]]) / 3
    return _shuffle(x + 0.1 * rng.standard_normal(x.shape), rng)


def _rings(n, rng):
    sizes = [n // 4] * 3
    sizes = [n - sum(sizes)] + sizes
    parts = []
    for radius, m in zip((1.0, 0.75, 0.5, 0.25), sizes):
        a = np.linspace(0, 2 * np.pi, m, endpoint=False)
        parts.append(radius * np.stack([np.cos(a), np.sin(a)], 1))
    x = 3.0 * np.concatenate(parts)
    return _shuffle(x + 0.08 * rng.standard_normal(x.shape), rng)


DATASETS = {"circles": _circles, "moons": _moons, "8gaussians": _8gaussians, "checkerboard": _checkerboard,
            "pinwheel": _pinwheel, "2spirals": _2spirals, "rings": _rings}


def _w1(z):
    return torch.sin(2 * math.pi * z[:, 0] / 4)


def _w2(z):
    return 3 * torch.exp(-0.5 * ((z[:, 0] - 1) / 0.6) ** 2)


def _w3(z):
    return 3 * torch.sigmoid((z[:, 0] - 1) / 0.3)


def _lse(*xs):
    return torch.logsumexp(torch.stack(xs), dim=0)


def _U1(z):
    r = torch.linalg.vector_norm(z, dim=1)
    return 0.5 * ((r - 2) / 0.4) ** 2 - _lse(-0.5 * ((z[:, 0] - 2) / 0.6) ** 2, -0.5 * ((z[:, 0] + 2) / 0.6) ** 2)


def _U2(z):
    return 0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2


def _U3(z):
    d = z[:, 1] - _w1(z)
    return -_lse(-0.5 * (d / 0.35) ** 2, -0.5 * ((d + _w2(z)) / 0.35) ** 2)


def _U4(z):
    d = z[:, 1] - _w1(z)
    return -_lse(-0.5 * (d / 0.4) ** 2, -0.5 * ((d + _w3(z)) / 0.35) ** 2)


def wall(z: torch.Tensor) -> torch.Tensor:
    """The confining energy along z₁: ``½ (softplus((z₁ − a)/s) + softplus((−z₁ − a)/s))²``, a = 3, s = 0.3."""
    z1 = z[:, 0]
    r = F.softplus((z1 - WALL_AT) / WALL_SCALE) + F.softplus((-z1 - WALL_AT) / WALL_SCALE)
    return 0.5 * r * r


def _confined(u):
    return lambda z: u(z) + wall(z)


# Rezende & Mohamed's energies as published: only U1 is normalisable
RAW_ENERGIES = {"U1": _U1, "U2": _U2, "U3": _U3, "U4": _U4}
# the targets of density matching: all normalisable (U1 decays in every direction, the others are confined)
TARGETS = {"U1": _U1, "U2c": _confined(_U2), "U3c": _confined(_U3), "U4c": _confined(_U4)}


def check_name(name: str, option: str = "data.name") -> str:
    """``"target"`` or ``"data"`` for a known name; a ValueError listing the known ones otherwise."""
    if name in TARGETS:
        return "target"
    if name in DATASETS:
        return "data"
    if name in RAW_ENERGIES:
        raise ValueError(f"{option}={name!r}: Rezende & Mohamed's {name} is not a density on R² (exp(−U) does not "
                         f"decay along z₁, so KL(q‖p) has no lower bound); use its confined version "
                         f"{option}={name}c (docs/cnf.md). Targets: {list(TARGETS)}")
    raise ValueError(f"{option}={name!r} is not a known target or data set; targets (density matching): "
                     f"{list(TARGETS)}; data sets (maximum likelihood): {list(DATASETS)}")


def sample_data(name: str, n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` samples of data set ``name`` as a float32 tensor ``[n, 2]``."""
    if name not in DATASETS:
        check_name(name)
        raise ValueError(f"{name!r} is a target density, not a data set; data sets: {list(DATASETS)}")
    return torch.from_numpy(np.ascontiguousarray(DATASETS[name](n, rng), dtype=np.float32))


def energy(name: str, z: torch.Tensor) -> torch.Tensor:
    """The energy ``U(z)`` of target ``name`` (``exp(−U)`` is its unnormalised density)."""
    if name not in TARGETS:
        check_name(name)
        raise ValueError(f"{name!r} is a data set, not a target density; targets: {list(TARGETS)}")
    return TARGETS[name](z)


def quadrature_grid(n: int, box: float = QUAD_BOX, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The midpoint rule's nodes on ``[−box, box]²``: ``(axis [n], points [n², 2], cell area)``.

    Points run over z₁ fastest (``points.reshape(n, n, 2)[i, j] = (axis[j], axis[i])``, as ``imshow`` draws)."""
    if n < 1 or not box > 0:
        raise ValueError(f"quadrature_grid: n={n!r} must be >= 1 and box={box!r} > 0")
    h = 2 * box / n
    axis = -box + h * (torch.arange(n, dtype=dtype) + 0.5)
    pts = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    return axis, pts, h * h


def _log_integral(u, n: int, box: float) -> float:
    _, pts, area = quadrature_grid(n, box)
    e = torch.cat([u(c) for c in pts.split(1 << 18)])
    return float(torch.logsumexp(-e, 0) + math.log(area))


@functools.lru_cache(maxsize=64)
def log_z(name: str, n: int = QUAD_N, box: float = QUAD_BOX) -> float:
    """``log ∫ exp(−U)`` of target ``name`` over ``[−box, box]²`` by the midpoint rule on ``n²`` cells (float64).

    The targets are smooth and their mass outside ``[−6, 6]²`` is below 1e-6, so the default's error is far below
    any KL difference we report (``tests/test_cnf_targets.py``: converged in ``n`` and in ``box``)."""
    if name not in TARGETS:
        energy(name, torch.zeros(1, 2))  # the error that names the known targets
    return _log_integral(TARGETS[name], n, box)


def grid_kl(log_p: torch.Tensor, log_q: torch.Tensor, area: float) -> float:
    """The forward ``KL(p‖q) = ∫ p (log p − log q)`` by the midpoint rule over the nodes of one grid.

    ``log_p`` is the target's unnormalised log-density at the nodes, normalised here over the grid (its cell
    masses ``wᵢ`` sum to 1, density ``wᵢ / area``); ``log_q`` is the model's normalised log-density there.
    Cells where ``p`` underflows contribute nothing (``0 · log 0 = 0``)."""
    log_p, log_q = log_p.double().reshape(-1), log_q.double().reshape(-1)
    log_w = torch.log_softmax(log_p, 0)
    w = log_w.exp()
    keep = w > 0
    return float((w[keep] * (log_w[keep] - math.log(area) - log_q[keep])).sum())


def outside_box(x: torch.Tensor, box: float = PLOT_BOX) -> torch.Tensor:
    """Which points lie outside ``[−box, box]²``."""
    return (x.abs() > box).any(dim=1)

"""Two-dimensional data sets and unnormalised target densities for the CNF experiments.

Data sets (samplers ``name(n, rng) -> float32 array [n, 2]``, ``rng`` a ``numpy.random.Generator``):

* ``circles`` and ``moons`` (the paper's Figure 5): the same constructions as scikit-learn's
  ``make_circles`` / ``make_moons`` (sklearn is not a dependency), with the noise of torchdiffeq's
  ``examples/cnf.py``: ``circles`` = ``make_circles(noise=0.06, factor=0.5)``; ``moons`` =
  ``make_moons(noise=0.06)`` shifted by ``(−0.5, −0.25)`` so it is centred like the circles.
* ``8gaussians``, ``checkerboard``, ``pinwheel``, ``2spirals``, ``rings``: the definitions of
  FFJORD's ``lib/toy_data.py`` (Grathwohl et al. 2019), written again here with an explicit generator.

Targets (energies ``U(z)``, unnormalised density ``exp(−U)``): U1–U4 of Rezende & Mohamed (2015), Table 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["DATASETS", "TARGETS", "sample_data", "energy", "make_circles", "make_moons", "check_name"]


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


TARGETS = {"U1": _U1, "U2": _U2, "U3": _U3, "U4": _U4}


def check_name(name: str, option: str = "data.name") -> str:
    """``"target"`` or ``"data"`` for a known name; a ValueError listing the known ones otherwise."""
    if name in TARGETS:
        return "target"
    if name in DATASETS:
        return "data"
    raise ValueError(f"{option}={name!r} is not a known target or data set; targets (density matching): "
                     f"{sorted(TARGETS)}; data sets (maximum likelihood): {list(DATASETS)}")


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
        raise ValueError(f"{name!r} is a data set, not a target density; targets: {sorted(TARGETS)}")
    return TARGETS[name](z)

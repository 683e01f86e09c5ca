"""Irregularly sampled 2-D spirals: the latent-ODE experiment's data (Chen et al. 2018, §5, Appendix E).

Two reference spirals on a dense grid of ``n_grid`` angles θ ∈ [0, θ_max]
(θ_max = 6π), as in torchdiffeq's ``examples/latent_ode.py`` (PR #5; the
authors' own code for Table 2 is not public):

* counter-clockwise: ``r = a + b·θ`` around ``(+5, 0)``;
* clockwise: the angle runs backwards, ``z = θ_max + 1 − θ``, ``r = a + b·50/z``
  around ``(−5, 0)``.

Each spiral is a window of ``n_window + n_extrap`` consecutive grid points of
one of them (exactly half of each split clockwise), starting at a uniformly
drawn index, so each starts at a different point. Training windows start in
``[n_window, n_grid − n_window − n_extrap)`` (torchdiffeq's lower end; the upper
end leaves room for the extrapolation points); validation and test windows
start in a narrower range (:func:`window_starts`), so that every held-out
point, the extrapolation points included, lies inside the span of grid
indices the training windows observe, ``held_out_margin`` points in from
both of its ends: no held-out spiral is predicted where training never looked. Time is the grid's angle
step (the spirals turn at about one radian per time unit) and starts at 0 in
every window. The first ``n_window`` points are the observation window: each
spiral keeps ``n_obs`` of them, drawn without replacement and sorted
(irregular times, different per spiral); the ``n_extrap`` points after it are
only ever predicted. Observations carry Gaussian noise of standard deviation
``noise_std``; the noise-free points are kept too. :func:`spiral_readings` is
the one scoring function of every model (Table 2's readings).

Generation is a pure function of ``(seed, split)``: train, validation and test
spirals come from independent streams, so the held-out splits never overlap
the training ones and do not change when the training set's size does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SpiralData", "make_spirals", "reference_spirals", "spiral_points", "window_starts", "draw_windows",
           "subsample_indices", "spiral_readings", "READINGS", "SPLITS", "HELD_OUT_MARGIN"]

SPLITS = ("train", "val", "test")
# Grid points by which every held-out window stays inside the span the training windows cover, at each end.
# The training split observes a random subset of each window (n_obs of n_window points, or Poisson events), so the
# extreme indices it actually observes fall a few points short of the windows' span; 10 points (0.19 time units,
# about 1/33 of a turn) keeps the held-out points inside what the default splits' observations reach, which
# tests/test_latent_ode.py checks on the data themselves (every n_obs, both directions, and the Poisson events).
HELD_OUT_MARGIN = 10


def spiral_points(theta, clockwise, theta_max: float = 6 * math.pi, a: float = 0.0, b: float = 0.3) -> np.ndarray:
    """Points ``[..., 2]`` of the clockwise (``clockwise`` true) or counter-clockwise reference spiral at angles ``theta``.

    The angle is the grid's parameter and time runs with it, so a window that
    starts at angle ``theta0`` is at ``spiral_points(theta0 + t, ...)`` at time ``t``.
    """
    theta = np.asarray(theta, dtype=np.float64)
    z = theta_max + 1.0 - theta  # clockwise: the angle decreases along the grid (torchdiffeq's construction)
    r_cw = a + b * 50.0 / z
    cw = np.stack([r_cw * np.cos(z) - 5.0, r_cw * np.sin(z)], axis=-1)
    r_cc = a + b * theta
    cc = np.stack([r_cc * np.cos(theta) + 5.0, r_cc * np.sin(theta)], axis=-1)
    return np.where(np.asarray(clockwise)[..., None], cw, cc)


def reference_spirals(n_grid: int = 1000, theta_max: float = 6 * math.pi, a: float = 0.0, b: float = 0.3):
    """``(t, clockwise, counter_clockwise)``: the grid's times ``[n_grid]`` and both spirals ``[n_grid, 2]``."""
    theta = np.linspace(0.0, theta_max, n_grid)
    return theta, spiral_points(theta, True, theta_max, a, b), spiral_points(theta, False, theta_max, a, b)


def window_starts(split: str, n_window: int, n_extrap: int, n_grid: int,
                  held_out_margin: int = HELD_OUT_MARGIN) -> tuple[int, int]:
    """``[lo, hi)``: the grid indices a window of split ``split`` may start at.

    Training windows start in ``[n_window, n_grid − n_window − n_extrap)``:
    torchdiffeq's lower end (its example starts windows at ``n_window`` or
    later), and room for the extrapolation points at the upper one. Their
    observation windows (the first ``n_window`` points) therefore span the
    grid indices ``[n_window, n_grid − n_extrap − 2]``. A validation or test
    window, observation *and* extrapolation points, lies inside that span,
    ``held_out_margin`` points in from each end: it starts in
    ``[n_window + margin, n_grid − n_window − 2·n_extrap − margin)``. So no
    held-out spiral is scored where no training spiral was ever observed
    (issue 23: with one range for every split, test spirals starting late
    extrapolated onto grid points no training observation reaches).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {list(SPLITS)}")
    if n_window < 1 or n_extrap < 1:
        raise ValueError(f"n_window={n_window!r} and n_extrap={n_extrap!r} must both be >= 1")
    if held_out_margin < 0:
        raise ValueError(f"held_out_margin={held_out_margin!r} must be >= 0 (grid points)")
    length = n_window + n_extrap
    lo, hi = n_window, n_grid - length  # training
    if split != "train":
        # the last training window starts at hi - 1 and observes up to hi - 1 + n_window - 1; a held-out window
        # starting at s ends at s + length - 1, which must be <= that minus the margin
        lo, hi = lo + held_out_margin, hi - n_extrap - held_out_margin
    if hi <= lo:
        raise ValueError(f"n_grid={n_grid!r} leaves no room for {split} windows of {length} points "
                         f"(n_window={n_window}, n_extrap={n_extrap}, held_out_margin={held_out_margin}): held-out "
                         f"windows must lie inside the span the training windows observe; raise n_grid")
    return lo, hi


def draw_windows(n_spirals: int, n_window: int, n_extrap: int, n_grid: int, rng: np.random.Generator,
                 split: str = "train", held_out_margin: int = HELD_OUT_MARGIN):
    """``(clockwise [n], start [n])``: which spirals run clockwise (exactly half) and each window's first grid index,
    uniform over :func:`window_starts` of ``split``."""
    if n_spirals < 2:
        raise ValueError(f"n_spirals={n_spirals!r} must be >= 2 (half clockwise, half counter-clockwise)")
    lo, hi = window_starts(split, n_window, n_extrap, n_grid, held_out_margin)
    clockwise = rng.permutation(np.arange(n_spirals) < n_spirals // 2)
    return clockwise, rng.integers(lo, hi, size=n_spirals)


def subsample_indices(n_spirals: int, n_window: int, n_obs: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_spirals, n_obs]`` sorted indices into ``range(n_window)``, drawn without replacement per spiral."""
    if not 1 <= n_obs <= n_window:
        raise ValueError(f"n_obs={n_obs!r} must be in [1, n_window={n_window}] (points kept of the first {n_window})")
    # argsort of uniform keys = a random permutation per row; its first n_obs entries are a sample without replacement
    keys = rng.random((n_spirals, n_window))
    return np.sort(np.argsort(keys, axis=1)[:, :n_obs], axis=1)


@dataclass
class SpiralData:
    """One split. Times are shared; which of the first ``n_window`` points are observed differs per spiral."""

    t: torch.Tensor  # [n_window + n_extrap] times of the window and the extrapolation points (t[0] = 0)
    clean: torch.Tensor  # [N, T, 2] noise-free spirals
    noisy: torch.Tensor  # [N, T, 2] with observation noise (every point; only observed ones are ever used as input)
    clockwise: torch.Tensor  # [N] bool
    obs_idx: torch.Tensor  # [N, n_obs] long, sorted, unique, < n_window
    n_window: int
    noise_std: float
    start: torch.Tensor | None = None  # [N] long: each window's first index on the reference grid (where it lies)

    @property
    def n_obs(self) -> int:
        return self.obs_idx.shape[1]

    @property
    def n_extrap(self) -> int:
        return len(self.t) - self.n_window

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def mask(self) -> torch.Tensor:
        """``[N, n_window]`` bool: which window points each spiral observes."""
        m = torch.zeros(len(self), self.n_window, dtype=torch.bool)
        return m.scatter_(1, self.obs_idx, True)

    def observed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The observations as dense tensors: values ``[N, n_obs, 2]`` (noisy) and their times ``[N, n_obs]``."""
        x = torch.gather(self.noisy, 1, self.obs_idx[..., None].expand(-1, -1, self.noisy.shape[-1]))
        return x, self.t[self.obs_idx]

    def subset(self, rows) -> "SpiralData":
        rows = torch.as_tensor(rows)
        return SpiralData(self.t, self.clean[rows], self.noisy[rows], self.clockwise[rows], self.obs_idx[rows],
                          self.n_window, self.noise_std, None if self.start is None else self.start[rows])


def make_spirals(n_spirals: int = 1000, n_obs: int = 100, noise_std: float = 0.1, seed: int = 0, split: str = "train",
                 n_window: int = 100, n_extrap: int = 100, n_grid: int = 1000, a: float = 0.0, b: float = 0.3,
                 dtype: torch.dtype = torch.float32) -> SpiralData:
    """``n_spirals`` spirals of split ``split``; deterministic given ``(seed, split)`` and the sizes."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {list(SPLITS)}")
    if not (math.isfinite(noise_std) and noise_std > 0):
        raise ValueError(f"noise_std={noise_std!r} must be a finite number > 0 (the observation noise's scale)")
    length = n_window + n_extrap
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    theta, cw, cc = reference_spirals(n_grid, a=a, b=b)
    clockwise, start = draw_windows(n_spirals, n_window, n_extrap, n_grid, rng, split)
    rows = start[:, None] + np.arange(length)[None, :]
    clean = np.where(clockwise[:, None, None], cw[rows], cc[rows])
    noisy = clean + noise_std * rng.standard_normal(clean.shape)
    obs_idx = subsample_indices(n_spirals, n_window, n_obs, rng)
    t = theta[:length] - theta[0]
    return SpiralData(torch.as_tensor(t, dtype=dtype), torch.as_tensor(clean, dtype=dtype),
                      torch.as_tensor(noisy, dtype=dtype), torch.as_tensor(clockwise),
                      torch.as_tensor(obs_idx, dtype=torch.long), n_window, float(noise_std),
                      torch.as_tensor(start, dtype=torch.long))


# Table 2's readings: every model is scored by spiral_readings, on the same points (issue 23). The paper says
# "predictive RMSE on 100 time points extending beyond those that were used for training" and does not say which
# 100 points, nor whether against noisy or noise-free values (docs/latent_ode.md argues which is likelier).
READINGS = {
    "rmse_window_noisy": "(a) RMSE over the trajectory's n_window = 100 timesteps (every grid point of the observation "
                         "window, observed or not), against the noisy points",
    "rmse_window_clean": "(a) RMSE over the trajectory's n_window = 100 timesteps (every grid point of the observation "
                         "window, observed or not), against the noise-free points",
    "rmse_extrap_clean": "(b) RMSE over the n_extrap = 100 grid points after the observation window, against the "
                         "noise-free points",
    "rmse_extrap_noisy": "(b') RMSE over the n_extrap = 100 grid points after the observation window, against noisy "
                         "points (the same noise model, drawn there too)",
}


def _rmse(err: torch.Tensor) -> float:
    return float(torch.sqrt((err * err).mean()))


def spiral_readings(pred: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor | None, n_window: int) -> dict:
    """Table 2's readings (:data:`READINGS`) of predictions ``pred`` ``[B, T, D]`` on the whole grid.

    Each is one root mean squared error pooled over every spiral, grid point
    and coordinate of its part of the grid: the first ``n_window`` points (the
    window) or the rest (the extrapolation). ``noisy`` None (data without
    noisy grid values): only the noise-free readings.
    """
    if pred.shape != clean.shape or (noisy is not None and noisy.shape != clean.shape):
        raise ValueError(f"pred has shape {tuple(pred.shape)}, clean {tuple(clean.shape)}"
                         + (f", noisy {tuple(noisy.shape)}" if noisy is not None else "") + "; they must match")
    if not 0 < n_window < pred.shape[1]:
        raise ValueError(f"n_window={n_window!r} must leave window and extrapolation points in a grid of "
                         f"{pred.shape[1]}")
    w = n_window
    out = {"rmse_window_clean": _rmse(pred[:, :w] - clean[:, :w]),
           "rmse_extrap_clean": _rmse(pred[:, w:] - clean[:, w:])}
    if noisy is not None:
        out["rmse_window_noisy"] = _rmse(pred[:, :w] - noisy[:, :w])
        out["rmse_extrap_noisy"] = _rmse(pred[:, w:] - noisy[:, w:])
    return {k: out[k] for k in READINGS if k in out}

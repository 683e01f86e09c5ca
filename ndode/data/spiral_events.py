"""Spirals observed at the events of an inhomogeneous Poisson process with a known rate (paper §5.1, Figure 7).

The paper's §5.1 models the observation times themselves as a Poisson
process whose rate ``λ(z(t))`` depends on the latent state; its Figure 7 shows
a learned rate on a toy data set and gives no number. Here the times come
from a **known** rate of the true state, so the learned rate can be scored
against it.

* **Spirals**: as in the latent-ODE experiment (:mod:`ndode.data.spirals`):
  windows of ``n_window + n_extrap`` grid points of the two reference spirals,
  half clockwise, each starting at a uniformly drawn grid index, validation
  and test windows inside the span the training windows observe
  (:func:`~ndode.data.spirals.window_starts`). A window
  starting at angle ``θ0`` is at :func:`~ndode.data.spirals.spiral_points`
  ``(θ0 + t)`` at time ``t``, so the true state is known at every real time,
  not only on the grid.
* **The rate** (:class:`EventRate`): ``λ(x) = rate_min + (rate_max − rate_min)
  · σ(x₂ / rate_scale)`` events per time unit, rising with the spiral's second
  coordinate ``x₂``: it swings between ``rate_min`` and ``rate_max`` as a
  spiral turns, so it changes within a sequence and differs between them.
* **Events**: drawn by thinning (Lewis & Shedler 1979, :func:`thinning`) on
  ``[0, t_end]``, the whole window. Those in the observation window
  ``[0, t_window]`` (``t_window`` = the last window grid time) are observed,
  with Gaussian noise of std ``noise_std`` on the true point; those after it
  (``future_times``) are held out to score the rate as a forecast. The grid
  (``t``, ``clean``) carries the noise-free spirals for the predictive RMSE of
  the extrapolation points, as in Table 2.
* **Splits**: pure functions of ``(seed, split)`` from streams of their own
  (not the grid data's), so held-out splits never overlap the training one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .spirals import SPLITS, draw_windows, spiral_points

__all__ = ["EventRate", "SpiralEvents", "make_spiral_events", "thinning", "pad_events"]


@dataclass(frozen=True)
class EventRate:
    """``λ(x) = rate_min + (rate_max − rate_min) · σ(x₂ / rate_scale)``: events per time unit at the point ``x``."""

    rate_min: float = 8.0
    rate_max: float = 40.0
    rate_scale: float = 2.0

    def __post_init__(self):
        for name in ("rate_min", "rate_max", "rate_scale"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name}={v!r} must be a finite number > 0 (a Poisson rate is positive)")
        if self.rate_max < self.rate_min:
            raise ValueError(f"rate_max={self.rate_max!r} must be >= rate_min={self.rate_min!r}")

    @property
    def bound(self) -> float:
        """An upper bound of the rate (thinning's dominating rate)."""
        return float(self.rate_max)

    def __call__(self, x):
        """``λ`` at points ``x`` ``[..., 2]`` (numpy or torch), shape ``[...]``."""
        s = x[..., 1] / self.rate_scale
        sig = 1.0 / (1.0 + np.exp(-s)) if isinstance(x, np.ndarray) else torch.sigmoid(s)
        return self.rate_min + (self.rate_max - self.rate_min) * sig


def thinning(rate, t_start: float, t_end: float, bound: float, rng: np.random.Generator) -> np.ndarray:
    """Event times of an inhomogeneous Poisson process on ``[t_start, t_end]``, sorted (Lewis–Shedler thinning).

    ``rate(t)`` maps an array of times to the rate there; it must lie in
    ``(0, bound]``. Candidates come from a homogeneous process of rate
    ``bound`` and each is kept with probability ``rate(t) / bound``.
    """
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"bound={bound!r} must be a finite number > 0 (the dominating rate)")
    if not (math.isfinite(t_start) and math.isfinite(t_end) and t_end >= t_start):
        raise ValueError(f"the interval [t_start={t_start!r}, t_end={t_end!r}] must be finite with t_end >= t_start")
    n = rng.poisson(bound * (t_end - t_start))
    cand = np.sort(rng.uniform(t_start, t_end, n))
    lam = np.asarray(rate(cand), dtype=np.float64)
    if lam.shape != cand.shape:
        raise ValueError(f"rate(t) returned shape {lam.shape} for {cand.shape[0]} times; it must return one rate per time")
    bad = ~(lam > 0) | (lam > bound * (1 + 1e-12))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"rate(t={cand[i]:.6g}) = {lam[i]!r} is outside (0, bound={bound!r}]: the rate must be positive "
                         "and at most the dominating rate")
    return cand[rng.uniform(0.0, bound, n) < lam]


def pad_events(seqs: list[np.ndarray], fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(padded [N, K, ...], lengths [N])`` from N >= 1 sequences (``K``: the longest length, at least 1)."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    k = max(int(lengths.max(initial=0)), 1)
    out = np.full((len(seqs), k) + np.shape(seqs[0])[1:], fill, dtype=np.float64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lengths


@dataclass
class SpiralEvents:
    """One split: grid spirals (for RMSE and the true rate on the grid) and the events, padded per sequence."""

    t: torch.Tensor  # [n_window + n_extrap] grid times (t[0] = 0)
    clean: torch.Tensor  # [N, T, 2] noise-free spirals on the grid
    clockwise: torch.Tensor  # [N] bool
    theta0: torch.Tensor  # [N] float64: each window's starting angle (the true state anywhere: spiral_points)
    times: torch.Tensor  # [N, K] observed event times in [0, t_window], sorted, zero-padded
    lengths: torch.Tensor  # [N] long, >= 1
    x: torch.Tensor  # [N, K, 2] noisy observations at the events (zero-padded)
    future_times: torch.Tensor  # [N, Kf] held-out events in (t_window, t_end], zero-padded
    future_lengths: torch.Tensor  # [N] long (may be 0)
    rate: EventRate
    n_window: int
    noise_std: float

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def t_window(self) -> float:
        return float(self.t[self.n_window - 1])

    @property
    def t_end(self) -> float:
        return float(self.t[-1])

    @staticmethod
    def _mask(lengths, k) -> torch.Tensor:
        return torch.arange(k)[None, :] < lengths[:, None]

    @property
    def mask(self) -> torch.Tensor:
        """``[N, K]`` bool: which entries of ``times``/``x`` are events (the rest is padding)."""
        return self._mask(self.lengths, self.times.shape[1])

    @property
    def future_mask(self) -> torch.Tensor:
        return self._mask(self.future_lengths, self.future_times.shape[1])

    def true_rate(self, t: torch.Tensor) -> torch.Tensor:
        """The true rate at times ``t`` ``[N, M]`` of each sequence (float64): ``λ(spiral(θ0 + t))``."""
        theta = self.theta0[:, None].numpy() + t.double().numpy()
        pts = spiral_points(theta, self.clockwise[:, None].numpy())
        return torch.as_tensor(self.rate(pts))

    def true_integral(self, t0: float, t1: float, n: int = 4001) -> torch.Tensor:
        """``∫_{t0}^{t1} λ dt`` per sequence ``[N]`` (float64), by Simpson's rule on ``n`` points (odd)."""
        n += 1 - n % 2
        t = torch.linspace(t0, t1, n, dtype=torch.float64).expand(len(self), -1)
        lam = self.true_rate(t)
        w = torch.ones(n, dtype=torch.float64)
        w[1:-1:2], w[2:-1:2] = 4.0, 2.0
        return (lam * w).sum(-1) * (t1 - t0) / (3 * (n - 1))

    def subset(self, rows) -> "SpiralEvents":
        rows = torch.as_tensor(rows)
        lengths, flen = self.lengths[rows], self.future_lengths[rows]
        k, kf = max(int(lengths.max()), 1), max(int(flen.max()), 1)  # trim the padding to this subset's longest
        return SpiralEvents(self.t, self.clean[rows], self.clockwise[rows], self.theta0[rows],
                            self.times[rows, :k], lengths, self.x[rows, :k], self.future_times[rows, :kf], flen,
                            self.rate, self.n_window, self.noise_std)


def make_spiral_events(n_spirals: int = 1000, rate: EventRate | None = None, noise_std: float = 0.1, seed: int = 0,
                       split: str = "train", n_window: int = 100, n_extrap: int = 100, n_grid: int = 1000,
                       a: float = 0.0, b: float = 0.3, dtype: torch.dtype = torch.float32) -> SpiralEvents:
    """``n_spirals`` spirals of split ``split`` observed at Poisson events; deterministic given ``(seed, split)``."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {list(SPLITS)}")
    if not (math.isfinite(noise_std) and noise_std > 0):
        raise ValueError(f"noise_std={noise_std!r} must be a finite number > 0 (the observation noise's scale)")
    rate = rate or EventRate()
    # a stream of its own (third key): these spirals are not the grid data's
    rng = np.random.default_rng([seed, SPLITS.index(split), 1])
    # the same start ranges per split as the grid data: held-out windows inside what training observes
    clockwise, start = draw_windows(n_spirals, n_window, n_extrap, n_grid, rng, split)
    theta_grid = np.linspace(0.0, 6 * math.pi, n_grid)
    t = theta_grid[: n_window + n_extrap] - theta_grid[0]
    theta0 = theta_grid[start]
    clean = spiral_points(theta0[:, None] + t[None, :], clockwise[:, None], a=a, b=b)
    t_window, t_end = t[n_window - 1], t[-1]
    seen, xs, future = [], [], []
    for i in range(n_spirals):
        def lam(s, i=i):
            return rate(spiral_points(theta0[i] + s, clockwise[i], a=a, b=b))

        ev = thinning(lam, 0.0, t_end, rate.bound, rng)
        obs, fut = ev[ev <= t_window], ev[ev > t_window]
        if not len(obs):
            raise ValueError(f"spiral {i} of split {split!r} has no events in the observation window [0, {t_window:.4g}], "
                             f"but the recognition network needs at least one: raise rate_min={rate.rate_min!r} "
                             f"(each window expects at least rate_min · {t_window:.4g} events)")
        seen.append(obs)
        xs.append(spiral_points(theta0[i] + obs, clockwise[i], a=a, b=b)
                  + noise_std * rng.standard_normal((len(obs), 2)))
        future.append(fut)
    times, lengths = pad_events(seen)
    x, _ = pad_events(xs)
    ftimes, flen = pad_events(future)

    def as_t(v):
        return torch.as_tensor(v, dtype=dtype)

    return SpiralEvents(as_t(t), as_t(clean), torch.as_tensor(clockwise), torch.as_tensor(theta0),
                        as_t(times), torch.as_tensor(lengths), as_t(x), as_t(ftimes), torch.as_tensor(flen),
                        rate, n_window, float(noise_std))

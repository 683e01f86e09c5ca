"""The latent-ODE experiment's baselines (Chen et al. 2018, §5.1, Table 2): an RNN that predicts the next observation.

The paper: "Our baseline was a recurrent neural net with 25 hidden units trained to minimize negative Gaussian
log-likelihood. We trained a second version of this RNN whose inputs were concatenated with the time difference
to the next observation to aid RNN with irregular observations." Nothing else about it (its rollout, its cell, its
schedule) is stated; what we chose, and why, is below and in docs/latent_ode.md.

* **Cell and output**: an Elman RNN (tanh, 25 hidden units) reads the observations in time order and, after each,
  predicts the next one as a residual step, ``x̂_{i+1} = x_i + W h_i`` (the network learns the displacement, so
  extrapolation does not start from a jump). ``time_gap=True`` (``rnn_dt``): each input is concatenated with the
  time gap to the point it predicts; the plain RNN sees only the values.
* **Training**: the Gaussian negative log-likelihood of each next observation (fixed standard deviation, the same
  as the latent ODE's likelihood). Optionally with **scheduled sampling** (``feed_prev``, Bengio et al. 2015): each
  input after the first is, with probability ``feed_prev``, the model's own prediction of it instead of the
  observation, so the model learns from the kind of input it is fed when it extrapolates. Learned from the RNN
  baselines of the same group (YuliaRubanova/latent_ode, ``lib/rnn_baselines.py``, ``run_rnn``: its classic RNN
  feeds its previous output with probability 0.5, one draw per time step for the whole batch, step by step); ours
  draws per sequence and step and feeds back in parallel (:meth:`RNNBaseline.scheduled`).
* **Predictions on the whole grid** (:meth:`RNNBaseline.predict_grid`, what every evaluation scores): the RNN makes
  predictions at *knots* and the grid is read off them by linear interpolation:

  - at the first observation time, the first observation itself (a causal model has nothing to predict it from;
    Rubanova et al.'s classic RNN also outputs the first data point there, ``shift_outputs``), and before it the
    same value;
  - at each later observation time ``t_{i+1}``, the one-step prediction from the observations up to ``t_i``
    (never from the point itself);
  - after the last observation, a **rollout at the time resolution the model was trained on**: its predictions
    fed back every ``rollout_dt``, the mean gap between consecutive training observations (100/n grid steps at
    n observations of 100), placed at ``t_n + k · rollout_dt`` (and, for ``rnn_dt``, with ``rollout_dt`` as the
    gap input). Fed back at every grid step instead, the plain RNN, which never sees time, runs ~100/n times too
    fast along the spiral: that was the baseline's "divergence" in issue 23.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .latent_ode import gaussian_log_likelihood

__all__ = ["RNNBaseline", "rnn_nll", "interpolate_knots"]


def interpolate_knots(t_knots: torch.Tensor, x_knots: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Values at times ``t`` ``[G]`` by linear interpolation of knots ``(t_knots [B, K], x_knots [B, K, D])`` per row.

    ``t_knots`` strictly increasing per row, ``K >= 2``; before the first knot the first value, after the last knot
    the last value.
    """
    b, k = t_knots.shape
    if k < 2:
        raise ValueError(f"interpolate_knots needs at least 2 knots per row, got {k}")
    tq = t.to(t_knots).expand(b, -1).contiguous()
    i1 = torch.searchsorted(t_knots.contiguous(), tq, right=True).clamp_(1, k - 1)
    i0 = i1 - 1
    t0, t1 = torch.gather(t_knots, 1, i0), torch.gather(t_knots, 1, i1)
    w = ((tq - t0) / (t1 - t0)).clamp_(0.0, 1.0)[..., None]
    d = x_knots.shape[-1]
    x0 = torch.gather(x_knots, 1, i0[..., None].expand(-1, -1, d))
    x1 = torch.gather(x_knots, 1, i1[..., None].expand(-1, -1, d))
    return x0 + w * (x1 - x0)


class RNNBaseline(nn.Module):
    def __init__(self, obs_dim: int = 2, hidden: int = 25, time_gap: bool = False):
        super().__init__()
        self.time_gap = time_gap
        self.rnn = nn.RNN(obs_dim + int(time_gap), hidden, batch_first=True)
        self.out = nn.Linear(hidden, obs_dim)
        # the rollout's time step: the mean gap of the training observations (set_rollout_step); a buffer, so it is
        # checkpointed with the weights
        self.register_buffer("rollout_dt", torch.tensor(float("nan")))

    def set_rollout_step(self, t_obs: torch.Tensor) -> float:
        """Set :attr:`rollout_dt` to the mean gap between consecutive observation times ``t_obs`` ``[N, n]`` (the
        training split's) and return it."""
        if t_obs.dim() != 2 or t_obs.shape[1] < 2:
            raise ValueError(f"t_obs has shape {tuple(t_obs.shape)}; the rollout step needs [N, n >= 2] observation "
                             "times")
        dt = float((t_obs[:, 1:] - t_obs[:, :-1]).mean())
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"the mean gap of the training observations is {dt!r}; it must be finite and > 0")
        self.rollout_dt.fill_(dt)
        return dt

    def _inputs(self, x: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, gaps[..., None]], dim=-1) if self.time_gap else x

    def forward(self, x: torch.Tensor, gaps: torch.Tensor, h=None):
        """One-step-ahead predictions ``[B, n, D]`` (entry i predicts the point after ``x[:, i]``) and the state.

        ``gaps`` ``[B, n]``: the time from each input point to the point it predicts.
        """
        out, h = self.rnn(self._inputs(x, gaps), h)
        return x + self.out(out), h

    def scheduled(self, x: torch.Tensor, gaps: torch.Tensor, feed_prev: float):
        """:meth:`forward` with scheduled sampling: input ``i >= 1`` is, with probability ``feed_prev`` (drawn per
        sequence and step from torch's global generator), the model's own prediction of point ``i`` instead of
        ``x[:, i]``. ``feed_prev = 0`` is :meth:`forward` (teacher forcing).

        In parallel (Duckworth et al. 2019, "Parallel scheduled sampling", one pass): the predictions fed back are
        those of a first, teacher-forced pass without gradient (each from the observations before it); the second
        pass reads the mixed inputs in one call of the RNN. Rubanova et al.'s ``run_rnn`` feeds back step by step
        instead (so fed-back errors can compound); that loop costs ~3x teacher forcing per iteration at n = 100
        against ~1.5x here, which the cpu budget cannot afford for 30 runs (docs/latent_ode.md).
        """
        if not 0.0 <= feed_prev <= 1.0:
            raise ValueError(f"feed_prev={feed_prev!r} must be a probability in [0, 1]")
        if feed_prev == 0.0:
            return self(x, gaps)
        with torch.no_grad():
            first, _ = self(x, gaps)  # first[:, i] predicts point i + 1 from the observations up to i
        own = torch.rand(x.shape[0], x.shape[1], 1, device=x.device) < feed_prev
        own[:, 0] = False  # the first input is always observed: nothing predicts it
        mixed = torch.where(own, torch.cat([x[:, :1], first[:, :-1]], dim=1), x)
        return self(mixed, gaps)

    def knots(self, x_obs: torch.Tensor, t_obs: torch.Tensor, t_end: float):
        """``(t_knots [B, K], x_knots [B, K, D])``: the first observation, the one-step predictions of observations
        2..n at their times, then the rollout every :attr:`rollout_dt` from the last observation to past ``t_end``."""
        dt = float(self.rollout_dt)
        if not math.isfinite(dt):
            raise RuntimeError("rollout_dt is not set: call set_rollout_step(training observation times) first")
        last = t_obs[:, -1:]
        gaps = torch.cat([t_obs[:, 1:] - t_obs[:, :-1], torch.full_like(last, dt)], dim=1)
        pred, h = self(x_obs, gaps)  # pred[:, -1]: the first rollout point, at t_n + dt
        k = max(1, math.ceil((float(t_end) - float(last.min())) / dt))
        x, future = pred[:, -1:], [pred[:, -1:]]
        step = torch.full_like(last, dt)
        for _ in range(k - 1):
            x, h = self(x, step, h)
            future.append(x)
        t_future = last + dt * torch.arange(1, k + 1, dtype=t_obs.dtype, device=t_obs.device)
        return (torch.cat([t_obs, t_future], dim=1),
                torch.cat([x_obs[:, :1], pred[:, :-1], torch.cat(future, dim=1)], dim=1))

    def predict_grid(self, x_obs: torch.Tensor, t_obs: torch.Tensor, t_grid: torch.Tensor) -> torch.Tensor:
        """Predictions ``[B, G, D]`` at every time of ``t_grid`` ``[G]`` from the observations ``x_obs`` ``[B, n, D]``
        at ``t_obs`` ``[B, n]`` (``n >= 2``): the knots (:meth:`knots`) interpolated linearly."""
        if t_obs.shape[1] < 2:
            raise ValueError(f"the RNN predicts from n >= 2 observations, got {t_obs.shape[1]}")
        t_knots, x_knots = self.knots(x_obs, t_obs, float(t_grid[-1]))
        return interpolate_knots(t_knots, x_knots, t_grid)


def rnn_nll(model: RNNBaseline, x_obs: torch.Tensor, t_obs: torch.Tensor, obs_std: float,
            feed_prev: float = 0.0) -> torch.Tensor:
    """Gaussian negative log-likelihood of observations 2..n given the ones before, per sequence, batch mean
    (scheduled sampling with probability ``feed_prev``)."""
    pred, _ = model.scheduled(x_obs[:, :-1], t_obs[:, 1:] - t_obs[:, :-1], feed_prev)
    return -gaussian_log_likelihood(x_obs[:, 1:], pred, obs_std).mean()

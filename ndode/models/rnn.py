"""The latent-ODE experiment's baselines (Chen et al. 2018, §5, Table 2): an RNN that predicts the next observation.

An Elman RNN (tanh, 25 hidden units) reads the observations in time order and,
after each, predicts the next one: ``x̂_{i+1} = x_i + W h_i`` (a residual
step: the network learns the displacement, so a constant-ish sequence is easy
and extrapolation does not start from a jump). Trained by the Gaussian
negative log-likelihood of each next observation (fixed standard deviation,
the same as the latent ODE's likelihood). It extrapolates by feeding its own
predictions back in.

``time_gap=True`` is the paper's second version: each input is concatenated
with the time gap to the observation being predicted, so irregular sampling
is visible to it; the plain RNN only sees the values.
"""

from __future__ import annotations

import torch
from torch import nn

from .latent_ode import gaussian_log_likelihood

__all__ = ["RNNBaseline", "rnn_nll"]


class RNNBaseline(nn.Module):
    def __init__(self, obs_dim: int = 2, hidden: int = 25, time_gap: bool = False):
        super().__init__()
        self.time_gap = time_gap
        self.rnn = nn.RNN(obs_dim + int(time_gap), hidden, batch_first=True)
        self.out = nn.Linear(hidden, obs_dim)

    def _inputs(self, x: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, gaps[..., None]], dim=-1) if self.time_gap else x

    def forward(self, x: torch.Tensor, gaps: torch.Tensor, h=None):
        """One-step-ahead predictions ``[B, n, D]`` (entry i predicts the point after ``x[:, i]``) and the state.

        ``gaps`` ``[B, n]``: the time from each input point to the point it predicts.
        """
        out, h = self.rnn(self._inputs(x, gaps), h)
        return x + self.out(out), h

    def predict(self, x_obs: torch.Tensor, t_obs: torch.Tensor, t_future: torch.Tensor):
        """Fit the observations, then extrapolate to ``t_future`` ``[F]`` (shared, increasing, after every ``t_obs``).

        Returns ``(fit, future)``: ``fit`` ``[B, n - 1, D]`` the one-step predictions
        of observations 2..n, ``future`` ``[B, F, D]``.
        """
        gaps = torch.cat([t_obs[:, 1:] - t_obs[:, :-1], t_future[0] - t_obs[:, -1:]], dim=1)
        pred, h = self(x_obs, gaps)
        x = pred[:, -1:]
        future = [x]
        dt = (t_future[1:] - t_future[:-1]).tolist()
        for gap in dt:
            x, h = self(x, x.new_full(x.shape[:2], gap), h)
            future.append(x)
        return pred[:, :-1], torch.cat(future, dim=1)


def rnn_nll(model: RNNBaseline, x_obs: torch.Tensor, t_obs: torch.Tensor, obs_std: float) -> torch.Tensor:
    """Gaussian negative log-likelihood of observations 2..n given the ones before, per sequence, batch mean."""
    pred, _ = model(x_obs[:, :-1], t_obs[:, 1:] - t_obs[:, :-1])
    return -gaussian_log_likelihood(x_obs[:, 1:], pred, obs_std).mean()

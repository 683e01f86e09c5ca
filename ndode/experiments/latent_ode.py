"""Latent ODE vs RNNs on irregularly sampled spirals (the paper's §5, Table 2, Figures 8 and 9).

    python experiments/latent_ode.py model=latent_ode data.n_obs=30          # budget=auto: paper with CUDA, else cpu
    python experiments/latent_ode.py model=rnn_dt data.n_obs=100 seed=1
    python experiments/latent_ode.py -m model=latent_ode,rnn,rnn_dt data.n_obs=30,50,100 seed=0,1
    make reproduce-latent-ode BUDGET=cpu                                     # the grid, then table and figures

A training unit is one iteration over ``budget.batch_size`` training spirals
(all of them by default: full batch, as torchdiffeq's example). The latent ODE
maximises the ELBO (one reparameterised sample, analytic KL); the RNNs
minimise the Gaussian negative log-likelihood of each next observation
(optionally with scheduled sampling, ``model.feed_prev``). Every evaluation
predicts every grid point of each held-out spiral, its observation window and
the ``n_extrap`` points after it, from its ``n_obs`` irregular observations,
and scores all three models by one function,
:func:`~ndode.data.spirals.spiral_readings`: Table 2's reading (a), the RMSE
over the window's 100 timesteps against the noisy and the noise-free points
(``test_rmse_window_noisy``, ``test_rmse_window_clean``), and reading (b), the
RMSE over the 100 points after it against the noise-free points
(``test_rmse_extrap_clean``). Choices are made on the validation split
(``val_*``), never the test split. After training, the latent ODE is evaluated
once more at the paper's tolerance, rtol = atol = 1.5e-8 (``*_paper_tol``).

The three models are two classes behind one interface (:class:`SpiralModel`):
:class:`SpiralLatentODE` and :class:`SpiralRNN` (``rnn``, and ``rnn_dt`` with the
time gaps as inputs). The task never asks which one it holds.

The Poisson-process variant (Figure 7) is its own experiment,
:mod:`ndode.experiments.latent_poisson` (``--config-name latent_poisson``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

import ndode
from ndode.data.spirals import make_spirals, spiral_readings
from ndode.harness import ConfigError, ExperimentConfig, atomic_save, ranged, register_schema
from ndode.models.latent_ode import LatentODE, latent_ode_elbo
from ndode.models.rnn import RNNBaseline, rnn_nll

from ._latent import PAPER_TOL, LatentBudget, NonFiniteLossError, SpiralSplits, SpiralTask

__all__ = ["LatentODEConfig", "LatentODETask", "SpiralModel", "SpiralLatentODE", "SpiralRNN", "MODELS",
           "NonFiniteLossError"]

LatentModelName = Enum("LatentModelName", {n: n for n in ("latent_ode", "rnn", "rnn_dt")}, module=__name__)


@dataclass
class SpiralDataConfig(SpiralSplits):
    n_obs: int = ranged(100, ge=1)  # points kept of each spiral's first n_window (irregular, per spiral): 30 | 50 | 100

    def validate(self, path: str) -> None:
        if self.n_obs > self.n_window:
            raise ConfigError(f"{path}.n_obs={self.n_obs!r} must be in [1, {path}.n_window={self.n_window}] "
                              f"(observations kept of the first {self.n_window} points)")


@dataclass
class LatentModelConfig:
    # latent_ode | rnn | rnn_dt (configs model=rnn_ss, rnn_dt_ss: the RNNs with feed_prev 0.5)
    name: LatentModelName = LatentModelName.latent_ode
    latent_dim: int = ranged(4, ge=1)
    rec_hidden: int = ranged(25, ge=1)  # recognition RNN (latent_ode)
    ode_hidden: int = ranged(20, ge=1)  # latent dynamics
    dec_hidden: int = ranged(20, ge=1)  # decoder
    rnn_hidden: int = ranged(25, ge=1)  # the baselines
    # scheduled sampling (the RNNs only): the probability that an input is the model's own prediction of it
    # (YuliaRubanova/latent_ode lib/rnn_baselines.py uses 0.5); 0: teacher forcing
    feed_prev: float = ranged(0.0, ge=0, le=1)
    obs_std: float = ranged(0.1, gt=0)  # the Gaussian likelihood's fixed standard deviation (all three models)

    def validate(self, path: str) -> None:
        if self.feed_prev and self.name.name not in ("rnn", "rnn_dt"):
            raise ConfigError(f"{path}.feed_prev={self.feed_prev!r}: scheduled sampling is for model=rnn|rnn_dt; "
                              f"model={self.name.name} must keep {path}.feed_prev=0")


@dataclass
class LatentODEConfig(ExperimentConfig):
    budget: LatentBudget = field(default_factory=LatentBudget)
    data: SpiralDataConfig = field(default_factory=SpiralDataConfig)
    model: LatentModelConfig = field(default_factory=LatentModelConfig)

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.model.name.name != "latent_ode" and self.data.n_obs < 2:
            raise ConfigError(f"data.n_obs={self.data.n_obs!r}: model={self.model.name.name} learns to predict the "
                              "next observation and needs data.n_obs >= 2")


register_schema("latent_ode_schema", LatentODEConfig)


class SpiralModel(Protocol):
    """What Table 2's task asks of a model (an ``nn.Module``; ``data``: a split of :func:`make_spirals`, ``t``: its
    grid on the model's device, ``solver``: ``ndode.solve``'s keyword arguments)."""

    loss_name: str  # what fit_loss returns, for the non-finite-loss message

    def fit_loss(self, data, t: torch.Tensor, solver: dict) -> tuple[torch.Tensor, dict, ndode.SolverStats | None]:
        """The training loss of a batch, its terms (numbers, for the log) and the solve's statistics (None: none)."""

    def predict(self, data, t: torch.Tensor, solver: dict) -> tuple[torch.Tensor, ndode.SolverStats | None]:
        """Predictions ``[B, T, 2]`` on the whole grid (window and extrapolation) from each spiral's observations,
        in the model's dtype, and the solve's statistics (None: none)."""

    def paper_tolerance_copy(self) -> nn.Module | None:
        """A float64 copy to evaluate at the paper's tolerance (None: the model solves nothing)."""

    def figure_arrays(self, test, val, t: torch.Tensor, solver: dict) -> dict:
        """Arrays of Figures 8 and 9 beyond the predictions (tensors or numpy arrays)."""

    def summary(self) -> dict:
        """What the run's summary adds about the trained model."""


def _observed(model: nn.Module, data) -> tuple[torch.Tensor, torch.Tensor]:
    """``data``'s observations and their times on the model's device, in its dtype."""
    p = next(model.parameters())
    return tuple(v.to(p.device, p.dtype) for v in data.observed())


class SpiralLatentODE(LatentODE):
    """The latent ODE: maximises the ELBO (one reparameterised sample of z0); predicts from the posterior mean."""

    loss_name = "ELBO"

    def __init__(self, m: LatentModelConfig, train):
        super().__init__(2, m.latent_dim, m.rec_hidden, m.ode_hidden, m.dec_hidden)
        self.obs_std = m.obs_std

    def fit_loss(self, data, t, solver):
        dev, w = t.device, data.n_window
        x_obs, t_obs = (v.to(dev) for v in data.observed())
        res = self(x_obs, t_obs, t[:w], data.obs_idx.to(dev), sample=True, **solver)
        terms = latent_ode_elbo(data.noisy[:, :w].to(dev), data.mask.to(dev), res["x_pred"], res["qz0_mean"],
                                res["qz0_logvar"], self.obs_std)
        return -terms["elbo"], {k: v.item() for k, v in terms.items()}, res["stats"]

    def _solve(self, data, t, solver) -> dict:
        x_obs, t_obs = _observed(self, data)
        return self(x_obs, t_obs, t.to(x_obs.dtype), None, sample=False, **solver)  # z0 = the posterior mean

    def predict(self, data, t, solver):
        res = self._solve(data, t, solver)
        return res["x_pred"], res["stats"]

    def paper_tolerance_copy(self):
        # float32 cannot resolve a relative tolerance below its epsilon (1.2e-7)
        return copy.deepcopy(self).double()

    def figure_arrays(self, test, val, t, solver, n_latent: int = 100, n_vary: int = 7) -> dict:
        lat = test.subset(range(min(n_latent, len(test))))
        res = self._solve(lat, t, solver)
        a = {"latent_z": res["z"].cpu(), "latent_clockwise": lat.clockwise}
        # Figure 9: the latent dimension of z0 that best separates the two directions (on validation
        # spirals), varied across its range while the others stay at a test spiral's posterior mean
        vx, vt = (v.to(t.device) for v in val.observed())
        mean_v, _ = self.encode(vx, vt)
        d_cw, d_cc = mean_v[val.clockwise], mean_v[~val.clockwise]
        sep = (d_cw.mean(0) - d_cc.mean(0)).abs() / mean_v.std(0).clamp_min(1e-6)
        dim = int(sep.argmax())
        lo, hi = float(mean_v[:, dim].min()), float(mean_v[:, dim].max())
        values = torch.linspace(lo, hi, n_vary)
        z0 = res["z0"][0].repeat(n_vary, 1)
        z0[:, dim] = values.to(z0)
        z, _ = self.trajectory(z0, t, None, **solver)
        a.update(vary_dim=np.array(dim), vary_values=values, vary_x=self.decoder(z).cpu(), vary_separation=sep.cpu())
        return a

    def summary(self) -> dict:
        return {}


class SpiralRNN(RNNBaseline):
    """The baseline RNN (``time_gap``: ``rnn_dt``): minimises the Gaussian negative log-likelihood of each next
    observation (scheduled sampling with probability ``feed_prev``); its rollout runs at the time resolution it is
    trained on (the training split's mean observation gap)."""

    loss_name = "negative log-likelihood"

    def __init__(self, m: LatentModelConfig, train, time_gap: bool):
        super().__init__(2, m.rnn_hidden, time_gap=time_gap)
        self.obs_std, self.feed_prev = m.obs_std, m.feed_prev
        self.set_rollout_step(train.observed()[1])

    def fit_loss(self, data, t, solver):
        x_obs, t_obs = (v.to(t.device) for v in data.observed())
        return rnn_nll(self, x_obs, t_obs, self.obs_std, self.feed_prev), {}, None

    def predict(self, data, t, solver):
        x_obs, t_obs = _observed(self, data)
        return self.predict_grid(x_obs, t_obs, t.to(x_obs.dtype)), None

    def paper_tolerance_copy(self):
        return None

    def figure_arrays(self, test, val, t, solver) -> dict:
        return {}

    def summary(self) -> dict:
        return {"rollout_dt": float(self.rollout_dt)}


MODELS = {"latent_ode": SpiralLatentODE,
          "rnn": lambda m, train: SpiralRNN(m, train, time_gap=False),
          "rnn_dt": lambda m, train: SpiralRNN(m, train, time_gap=True)}


class LatentODETask(SpiralTask):
    goals = {"val_rmse_extrap_clean": "min", "val_rmse_window_noisy": "min"}
    model: SpiralModel

    def make_split(self, name: str, n: int):
        d = self.cfg.data
        return make_spirals(n, d.n_obs, d.noise_std, d.seed, name, d.n_window, d.n_extrap)

    def build_model(self, m):
        return MODELS[m.name.name](m, self.train)

    def objective(self, data, step: int):
        try:
            loss, terms, stats = self.model.fit_loss(data, self.t, self.solver)
        except ndode.SolverError as e:
            raise self.solve_failed(step, e) from e
        self.check_finite(loss, self.model.loss_name, step, stats)
        return loss, terms, stats

    def model_summary(self) -> dict:
        return self.model.summary()

    # ---- evaluation
    @staticmethod
    def readings(data, pred) -> dict:
        """Table 2's readings of ``pred`` (:func:`~ndode.data.spirals.spiral_readings`: the same for every model)."""
        return spiral_readings(pred, data.clean.to(pred), data.noisy.to(pred), data.n_window)

    def evaluate(self) -> dict:
        out = {}
        for name, data in self.eval_splits():
            pred, stats = self.model.predict(data, self.t, self.eval_solver)
            out.update({f"{name}_{k}": v for k, v in self.readings(data, pred).items()})
            if name == "test" and stats is not None:
                out["nfe_eval"] = stats.nfe
        return out

    # ---- after training: the paper's tolerance, and the arrays for Figures 8 and 9 (drawn by scripts/make_figures.py)
    def analyze(self, run_dir: Path) -> dict:
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.paper_tolerance_readings()
                arrays = self._figure_arrays()
        finally:
            self.model.train()
        (run_dir / "arrays").mkdir(exist_ok=True)
        atomic_save(run_dir / "arrays" / "spirals.npz", lambda tmp: np.savez_compressed(tmp, **arrays))
        if "vary_dim" in arrays:
            out["fig9_dim"] = int(arrays["vary_dim"])
        return out

    def paper_tolerance_readings(self) -> dict:
        """The test readings from one more solve at the paper's rtol = atol = 1.5e-8 (``*_paper_tol``), with its NFE,
        by a float64 copy of the trained model; nothing for a model that solves nothing."""
        model = self.model.paper_tolerance_copy()
        if model is None:
            return {}
        pred, stats = model.predict(self.test, self.t, dict(self.eval_solver, rtol=PAPER_TOL, atol=PAPER_TOL))
        out = {f"test_{k}_paper_tol": v for k, v in self.readings(self.test, pred).items()}
        out.update(nfe_eval_paper_tol=stats.nfe, paper_tol=PAPER_TOL)
        return out

    def _figure_arrays(self, n_show: int = 4) -> dict:
        data = self.test
        # the first n_show/2 test spirals of each direction
        cw = torch.nonzero(data.clockwise).flatten()[: n_show // 2]
        cc = torch.nonzero(~data.clockwise).flatten()[: n_show - len(cw)]
        show = data.subset(torch.cat([cw, cc]))
        pred, _ = self.model.predict(show, self.t, self.eval_solver)
        x_obs, t_obs = show.observed()
        w = data.n_window
        # the fit: what each model predicts on the window's grid (the latent ODE's reconstruction; the RNN's
        # first observation and one-step predictions, interpolated), as scored by reading (a)
        fit_t, fit_x = self.t[:w].expand(len(show), -1), pred[:, :w]
        a = {"t": self.t.cpu(), "n_window": np.array(w), "clean": show.clean, "obs_x": x_obs,
             "obs_t": t_obs, "fit_t": fit_t, "fit_x": fit_x, "extrap_x": pred[:, w:], "clockwise": show.clockwise,
             "model": np.array(self.cfg.model.name.name), "n_obs": np.array(data.n_obs),
             **self.model.figure_arrays(data, self.val, self.t, self.eval_solver)}
        return {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in a.items()}

"""The latent ODE on spirals observed at the events of a Poisson process (the paper's §5.1, Figure 7).

    python experiments/latent_ode.py --config-name latent_poisson                       # the Poisson term on
    python experiments/latent_ode.py --config-name latent_poisson model.poisson=false   # and off
    make reproduce-poisson BUDGET=cpu

Each spiral is observed at the events of a Poisson process with a known rate of
its state (:mod:`ndode.data.spiral_events`); the model
(:class:`~ndode.models.latent_ode.PoissonLatentODE`) adds the log-likelihood of
those times to the ELBO. Evaluation scores the predicted spirals as Table 2
does (the noise-free readings) and the learned rate against the true one and a
homogeneous Poisson baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import torch

import ndode
from ndode.data.spiral_events import EventRate, make_spiral_events
from ndode.data.spirals import spiral_readings
from ndode.harness import ConfigError, ExperimentConfig, atomic_save, ranged, register_schema
from ndode.models.latent_ode import PoissonLatentODE, latent_ode_elbo, poisson_log_likelihood

from ._latent import LatentBudget, NonFiniteLossError, SpiralSplits, SpiralTask

__all__ = ["LatentPoissonConfig", "PoissonTask", "NonFiniteLossError"]

PoissonModelName = Enum("PoissonModelName", {"latent_poisson": "latent_poisson"}, module=__name__)


@dataclass
class EventSpiralConfig(SpiralSplits):
    """Observation times: a Poisson process of known rate λ(x) = rate_min + (rate_max - rate_min) σ(x₂ / rate_scale)
    (events per time unit, x₂ the spiral's second coordinate), drawn by thinning on the window and beyond it."""

    rate_min: float = ranged(8.0, gt=0)
    rate_max: float = ranged(40.0, gt=0)
    rate_scale: float = ranged(2.0, gt=0)

    def validate(self, path: str) -> None:
        if self.rate_max < self.rate_min:
            raise ConfigError(f"{path}.rate_max={self.rate_max!r} must be >= {path}.rate_min={self.rate_min!r}")


@dataclass
class PoissonModelConfig:
    name: PoissonModelName = PoissonModelName.latent_poisson
    latent_dim: int = ranged(4, ge=1)
    rec_hidden: int = ranged(25, ge=1)  # recognition RNN
    ode_hidden: int = ranged(20, ge=1)  # latent dynamics
    dec_hidden: int = ranged(20, ge=1)  # decoder
    # rnn_hidden and feed_prev are Table 2's RNN options, unused here; kept so that the records made while both
    # experiments had one schema keep their configuration (a rerun of one of them compares equal and is skipped)
    rnn_hidden: int = ranged(25, ge=1)
    feed_prev: float = ranged(0.0, ge=0, le=1)
    obs_std: float = ranged(0.1, gt=0)  # the Gaussian likelihood's fixed standard deviation
    rate_hidden: int = ranged(20, ge=1)  # log λ(z): one hidden layer
    poisson: bool = True  # the Poisson term in the ELBO (false: the same model and data without it)

    def validate(self, path: str) -> None:
        if self.feed_prev:
            raise ConfigError(f"{path}.feed_prev={self.feed_prev!r}: scheduled sampling is for Table 2's RNNs "
                              f"(python experiments/latent_ode.py model=rnn|rnn_dt); model=latent_poisson must keep "
                              f"{path}.feed_prev=0")


@dataclass
class LatentPoissonConfig(ExperimentConfig):
    budget: LatentBudget = field(default_factory=LatentBudget)
    data: EventSpiralConfig = field(default_factory=EventSpiralConfig)
    model: PoissonModelConfig = field(default_factory=PoissonModelConfig)


register_schema("latent_poisson_schema", LatentPoissonConfig)


class PoissonTask(SpiralTask):
    """The latent ODE on spirals observed at Poisson events, with the times' log-likelihood in the ELBO (§5.1)."""

    goals = {"val_rmse_extrap_clean": "min", "val_event_ll": "max"}
    train_terms = ("loss", "elbo", "kl", "log_lik_times")
    model: PoissonLatentODE

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self._truth: dict | None = None
        # the homogeneous Poisson baseline: one rate for every sequence and time, its MLE on the training events
        self.rate_homogeneous = float(self.train.lengths.sum()) / (len(self.train) * self.train.t_window)

    def make_split(self, name: str, n: int):
        d = self.cfg.data
        try:
            return make_spiral_events(n, EventRate(d.rate_min, d.rate_max, d.rate_scale), d.noise_std, d.seed, name,
                                      d.n_window, d.n_extrap)
        except ValueError as e:
            raise ConfigError(f"data.rate_min={d.rate_min!r}, data.rate_max={d.rate_max!r}: {e}") from e

    def build_model(self, m):
        return PoissonLatentODE(2, m.latent_dim, m.rec_hidden, m.ode_hidden, m.dec_hidden, m.rate_hidden, m.poisson)

    def _events(self, data):
        return (v.to(self.device) for v in (data.x, data.times, data.lengths, data.mask))

    def objective(self, data, step: int):
        x, times, lengths, mask = self._events(data)
        mean, logvar = self.model.encode(x, times, lengths)
        z0 = self.model.sample_z0(mean, logvar)
        try:
            res = self.model.solve_events(z0, times, mask, data.t_window, **self.solver)
        except ndode.SolverError as e:
            raise self.solve_failed(step, e) from e
        times_ll = (poisson_log_likelihood(res["log_rate"], mask, res["Lambda_end"]) if self.model.poisson
                    else None)
        terms = latent_ode_elbo(x, mask, self.model.decoder(res["z"]), mean, logvar, self.cfg.model.obs_std,
                                extra_log_lik=times_ll)
        loss = -terms["elbo"]
        self.check_finite(loss, "ELBO", step, res["stats"])
        out = {k: v.item() for k, v in terms.items()}
        if times_ll is not None:
            out["log_lik_times"] = times_ll.mean().item()
        return loss, out, res["stats"]

    # ---- evaluation
    def truth(self) -> dict:
        """Per test sequence, computed once: the log-likelihood of its event times under the true rate and under
        the homogeneous baseline, in the window and after it; and the true rate on the grid."""
        if self._truth is None:
            data, tw, te, lam = self.test, self.test.t_window, self.test.t_end, self.rate_homogeneous
            log_true = torch.log(data.true_rate(data.times))
            log_true_f = torch.log(data.true_rate(data.future_times))
            n, nf = data.lengths.double(), data.future_lengths.double()
            self._truth = {
                "true_ll": poisson_log_likelihood(log_true, data.mask, data.true_integral(0.0, tw)),
                "true_ll_future": poisson_log_likelihood(log_true_f, data.future_mask, data.true_integral(tw, te)),
                "homogeneous_ll": n * math.log(lam) - lam * tw,
                "homogeneous_ll_future": nf * math.log(lam) - lam * (te - tw),
                "rate_grid": data.rate(data.clean.double()).float(),  # [B, T]
            }
        return self._truth

    def score(self, data) -> dict:
        """Everything evaluation reports of one split, per sequence where it is a likelihood."""
        x, times, lengths, mask = self._events(data)
        mean, _ = self.model.encode(x, times, lengths)  # z0 = the posterior mean
        kw = self.eval_solver
        z_grid, stats = self.model.trajectory(mean, self.t, None, **kw)
        out = {"x_pred": self.model.decoder(z_grid), "z0": mean, "nfe": stats.nfe}
        if self.model.poisson:
            n_seq = len(data)
            out["rate_grid"] = self.model.rate(z_grid)  # [B, T]
            # one solve through the window's events, t_window and the held-out later events
            ft, fmask = data.future_times.to(self.device), data.future_mask.to(self.device)
            tw = torch.full((n_seq, 1), data.t_window, dtype=times.dtype, device=self.device)
            res = self.model.solve_events(mean, torch.cat([times, ft, tw], 1),
                                          torch.cat([mask, fmask, torch.ones_like(mask[:, :1])], 1), data.t_end, **kw)
            k, kf = times.shape[1], ft.shape[1]
            lam_w = res["Lambda"][:, -1]
            out["event_ll"] = poisson_log_likelihood(res["log_rate"][:, :k], mask, lam_w)
            out["event_ll_future"] = poisson_log_likelihood(res["log_rate"][:, k:k + kf], fmask,
                                                            res["Lambda_end"] - lam_w)
        return out

    @staticmethod
    def _rel_l2(pred, true) -> float:
        return float(torch.linalg.vector_norm(pred - true) / torch.linalg.vector_norm(true))

    def evaluate(self) -> dict:
        out = {}
        for name, data in self.eval_splits():
            sc = self.score(data)
            # the same scoring function as Table 2; the events carry no noisy grid values: the noise-free readings
            out.update({f"{name}_{k}": v for k, v in
                        spiral_readings(sc["x_pred"], data.clean.to(self.device), None, data.n_window).items()})
            if not self.model.poisson:
                continue
            out[f"{name}_event_ll"] = float(sc["event_ll"].mean())
            if name == "test":
                truth, w = self.truth(), data.n_window
                true_rate = truth["rate_grid"].to(self.device)
                flat = torch.full_like(true_rate, self.rate_homogeneous)
                out.update(
                    test_event_ll_future=float(sc["event_ll_future"].mean()),
                    test_true_ll=float(truth["true_ll"].mean()),
                    test_true_ll_future=float(truth["true_ll_future"].mean()),
                    test_homogeneous_ll=float(truth["homogeneous_ll"].mean()),
                    test_homogeneous_ll_future=float(truth["homogeneous_ll_future"].mean()),
                    test_rate_rel_l2=self._rel_l2(sc["rate_grid"][:, :w], true_rate[:, :w]),
                    test_rate_rel_l2_future=self._rel_l2(sc["rate_grid"][:, w:], true_rate[:, w:]),
                    test_homogeneous_rate_rel_l2=self._rel_l2(flat[:, :w], true_rate[:, :w]),
                    test_homogeneous_rate_rel_l2_future=self._rel_l2(flat[:, w:], true_rate[:, w:]),
                    homogeneous_rate=self.rate_homogeneous)
        return out

    def summary(self, final_eval: dict, final_train: dict) -> dict:
        return {**super().summary(final_eval, final_train), "poisson": bool(self.model.poisson)}

    # ---- arrays for Figure 7 (drawn by scripts/make_figures.py)
    def analyze(self, run_dir: Path) -> dict:
        self.model.eval()
        try:
            with torch.no_grad():
                data = self.test.subset(range(min(4, len(self.test))))
                sc = self.score(data)
                a = {"t": self.t, "t_window": np.array(data.t_window), "times": data.times, "lengths": data.lengths,
                     "future_times": data.future_times, "future_lengths": data.future_lengths,
                     "true_rate": data.rate(data.clean.double()), "clean": data.clean, "obs_x": data.x,
                     "x_pred": sc["x_pred"], "clockwise": data.clockwise, "poisson": np.array(self.model.poisson),
                     "homogeneous_rate": np.array(self.rate_homogeneous)}
                if self.model.poisson:
                    a["rate"] = sc["rate_grid"]
        finally:
            self.model.train()
        a = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in a.items()}
        (run_dir / "arrays").mkdir(exist_ok=True)
        atomic_save(run_dir / "arrays" / "poisson.npz", lambda tmp: np.savez_compressed(tmp, **a))
        return {}

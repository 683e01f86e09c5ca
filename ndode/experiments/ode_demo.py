"""Demo experiment: learn the dynamics of a 2-D spiral ODE from noisy samples.

True dynamics ``dy/dt = A y³`` with ``A = [[-0.1, 2.0], [-2.0, -0.1]]``,
``y0 = [2, 0]``, ``t`` in ``[0, 25]``; the learned ones ``dy/dt = f_θ(y)``, a
small MLP. Training fits short windows of noisy samples; the score is the
mean squared error of the whole learned trajectory (integrated from ``y0``)
at held-out times, against the exact trajectory.

    python experiments/ode_demo.py                                   # cpu budget (make demo)
    python experiments/ode_demo.py solver.method=rk4 budget=smoke seed=3
    python experiments/ode_demo.py -m seed=0,1,2 hydra/launcher=joblib
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import ndode
from ndode.data.spiral_ode import make_spiral_data, spiral_dynamics
from ndode.harness import (
    BudgetConfig,
    ConfigError,
    ExperimentConfig,
    RunContext,
    Task,
    atomic_save,
    ranged,
    register_schema,
    solver_kwargs,
)
from ndode.models.ode_demo import ODEFunc


@dataclass
class DataConfig:
    n_times: int = ranged(1000, ge=2)
    t_end: float = ranged(25.0, gt=0)
    noise_std: float = ranged(0.05, ge=0)
    heldout_every: int = ranged(5, ge=2)  # 1 would hold out every sample


@dataclass
class ModelConfig:
    name: str = "mlp"
    hidden: int = ranged(50, ge=1)
    cubic_features: bool = True


@dataclass
class OptimConfig:
    name: str = "rmsprop"  # rmsprop | adam
    lr: float = ranged(1e-3, gt=0)
    cosine: bool = False  # anneal the learning rate to 0 over phase 1 (a cosine)
    refine_warmup: float = ranged(0.5, ge=0, le=1)  # phase 2: fraction of its steps over which the horizon grows to all of t

    def validate(self, path: str) -> None:
        if self.name not in ("rmsprop", "adam"):
            raise ConfigError(f"{path}.name={self.name!r} is not one of ['rmsprop', 'adam']")


@dataclass
class ODEDemoBudget(BudgetConfig):
    batch_size: int = ranged(20, ge=1)  # windows per mini-batch
    batch_time: int = ranged(10, ge=2)  # training samples per window
    refine_steps: int = ranged(0, ge=0)  # the last units: L-BFGS steps on the whole training series, from y0
    refine_max_iter: int = ranged(4, ge=1)  # L-BFGS iterations per refine unit

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.refine_steps >= self.steps:
            raise ConfigError(f"{path}.refine_steps={self.refine_steps!r} must be in [0, {path}.steps={self.steps})")


@dataclass
class ODEDemoConfig(ExperimentConfig):
    budget: ODEDemoBudget = field(default_factory=ODEDemoBudget)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


register_schema("ode_demo_schema", ODEDemoConfig)


class ODEDemoTask(Task):
    """Two phases, as in classical system identification.

    1. Mini-batches of short windows, each integrated from its first noisy
       sample (torchdiffeq's ode_demo recipe): cheap, and it finds the basin.
       Alone it is not enough: a window of 0.25 time units barely feels a 1 %
       error in the slow inner rotation, which over 25 time units becomes a
       phase error of the whole spiral.
    2. ``budget.refine_steps`` L-BFGS steps on the mean squared error of the
       whole training series, integrated from ``y0`` (the quantity the score
       measures at the held-out times), started from phase 1's solution.
    """

    goals = {"mse_heldout": "min"}

    def __init__(self, cfg, ctx: RunContext):
        self.cfg, self.device = cfg, ctx.device
        g = torch.Generator().manual_seed(cfg.seed)
        d = cfg.data
        self.data = make_spiral_data(d.n_times, d.t_end, d.noise_std, d.heldout_every, cfg.budget.batch_time, g)
        self.t = self.data.t.to(self.device)
        self.y_obs = self.data.y_obs.to(self.device)
        self.y_true = self.data.y_true.to(self.device)
        self.heldout = self.data.heldout.to(self.device)
        self.starts = self.data.window_starts
        self.offsets = self.data.window_offsets
        self.t_window = (self.data.t[self.offsets] - self.data.t[0]).to(self.device)
        self.model = ODEFunc(cfg.model.hidden, cfg.model.cubic_features).to(self.device)
        opt = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam}[cfg.optim.name]
        self.optimizer = opt(self.model.parameters(), lr=cfg.optim.lr)
        if cfg.optim.cosine:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=max(1, cfg.budget.steps - cfg.budget.refine_steps))
        self.solver = solver_kwargs(cfg.solver)
        # the evaluation's solve: nothing differentiates it, so no adjoint
        self.eval_solver = {**self.solver, "adjoint": None}
        self.batches = torch.Generator().manual_seed(cfg.seed + 1)  # mini-batch sampling, checkpointed
        self.refiner = torch.optim.LBFGS(self.model.parameters(), lr=1.0, max_iter=cfg.budget.refine_max_iter,
                                         history_size=20, line_search_fn="strong_wolfe")
        self.t_train, self.y_train = self.t[~self.heldout], self.y_obs[~self.heldout]
        # what the summary reports about training; checkpointed, so a resumed run reports the same
        self.tally = {"window_steps": 0, "window_loss": None, "nfe_forward": 0, "nfe_backward": 0, "refine_mse": None}

    def train_step(self, step: int) -> dict:
        b = self.cfg.budget
        if step >= b.steps - b.refine_steps:
            return self._refine_step(step - (b.steps - b.refine_steps))
        pick = torch.randint(len(self.starts), (b.batch_size,), generator=self.batches)
        first = self.starts[pick]
        windows = (first[:, None] + self.offsets[None, :]).to(self.device)  # [B, T]
        y0 = self.y_obs[first.to(self.device)]  # windows start from a noisy sample
        target = self.y_obs[windows].transpose(0, 1)  # [T, B, 2]
        sol = ndode.solve(self.model, y0, self.t_window, **self.solver)
        loss = (sol.ys - target).abs().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        out = {"loss": loss.item(), "nfe_forward": sol.stats.nfe, "nfe_backward": sol.stats.nfe_backward}
        self.tally["window_steps"] += 1
        self.tally["window_loss"] = out["loss"]
        self.tally["nfe_forward"] += sol.stats.nfe
        self.tally["nfe_backward"] += sol.stats.nfe_backward or 0
        return out

    def _refine_step(self, k: int) -> dict:
        # Fit a growing prefix of the series first: the fast outer turns set the phase of all later
        # ones, and a short horizon cannot lock onto a trajectory one turn ahead or behind.
        warmup = math.ceil(self.cfg.optim.refine_warmup * self.cfg.budget.refine_steps)
        frac = min(1.0, (k + 1) / warmup) if warmup else 1.0
        n = max(2, math.ceil(frac * len(self.t_train)))
        t, y = self.t_train[:n], self.y_train[:n]
        nfe = {"forward": 0, "backward": 0}

        def closure():
            self.refiner.zero_grad(set_to_none=True)
            sol = ndode.solve(self.model, self.y_true[0], t, **self.solver)
            loss = ((sol.ys - y) ** 2).mean()
            loss.backward()
            nfe["forward"] += sol.stats.nfe
            nfe["backward"] += sol.stats.nfe_backward or 0
            return loss

        loss = self.refiner.step(closure)
        self.tally["refine_mse"] = loss.item()
        return {"refine_mse": loss.item(), "refine_horizon": t[-1].item(), "refine_nfe_forward": nfe["forward"],
                "refine_nfe_backward": nfe["backward"] if self.solver["adjoint"] is not None else None}

    def _trajectory(self):
        return ndode.solve(self.model, self.y_true[0], self.t, **self.eval_solver)

    def evaluate(self) -> dict:
        sol = self._trajectory()
        err = ((sol.ys - self.y_true) ** 2).mean(dim=-1)
        return {"mse_heldout": err[self.heldout].mean().item(), "mse_train_times": err[~self.heldout].mean().item(),
                "nfe_eval": sol.stats.nfe}

    def summary(self, final_eval: dict, final_train: dict) -> dict:
        n = max(self.tally["window_steps"], 1)
        return {**final_eval, "window_loss": self.tally["window_loss"], "refine_mse": self.tally["refine_mse"],
                "nfe_forward": self.tally["nfe_forward"] / n,
                "nfe_backward": self.tally["nfe_backward"] / n if self.solver["adjoint"] is not None else None,
                "traj_var": self.y_true.var(dim=0).mean().item()}

    def state_dict(self) -> dict:
        return {"batches": self.batches.get_state(), "refiner": self.refiner.state_dict(), "tally": dict(self.tally)}

    def load_state_dict(self, state: dict) -> None:
        self.batches.set_state(state["batches"])
        self.refiner.load_state_dict(state["refiner"])
        self.tally = dict(state["tally"])

    def make_figures(self, run_dir: Path) -> None:
        from ndode.report.figures import plot_ode_demo, save_figure

        with torch.no_grad():
            learned = self._trajectory().ys
            lim = float(self.y_true.abs().max()) * 1.1
            axis = torch.linspace(-lim, lim, 21, device=self.device)
            grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)
            true_field = spiral_dynamics(0.0, grid)
            learned_field = self.model(0.0, grid)
        arrays = {k: v.detach().cpu().numpy() for k, v in dict(
            t=self.t, y_true=self.y_true, y_obs=self.y_obs, y_learned=learned, heldout=self.heldout,
            grid=grid.reshape(21, 21, 2), true_field=true_field.reshape(21, 21, 2),
            learned_field=learned_field.reshape(21, 21, 2)).items()}
        (run_dir / "arrays").mkdir(exist_ok=True)
        atomic_save(run_dir / "arrays" / "ode_demo.npz", lambda tmp: np.savez_compressed(tmp, **arrays))
        save_figure(plot_ode_demo(arrays), run_dir / "figures" / "ode_demo.png")

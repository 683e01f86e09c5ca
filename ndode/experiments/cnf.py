"""Continuous normalizing flows vs planar flows (the paper's §4, Figures 4 and 5) and FFJORD's toy densities.

What a run does follows from ``data``:

* a target (``U1``, ``U2c``, ``U3c``, ``U4c``: Rezende & Mohamed 2015's energies, U2–U4 confined so that they are
  densities, ``ndode/data/toy2d.py``): density matching, minimise the true ``KL(q‖p) = E_q[log q(x) + U(x)] + log Z``
  (``log Z`` by quadrature) from base samples (Figure 4). Validation: the KL on fixed base draws of the run's own;
  the reported KL, forward ``KL(p‖q)`` on a grid and the mass outside the plotted box come after training;
* a data set (``circles``, ``moons``, ``8gaussians``, ``checkerboard``, ``pinwheel``, ``2spirals``, ``rings``):
  maximum likelihood, minimise the negative log-likelihood of fresh samples each iteration (Figure 5 and
  the FFJORD toys); validation is the NLL of a fixed held-out validation sample, the score the NLL of a fixed
  held-out test sample (each from its own stream, the same for every run).

Learning rates and optimisers are chosen on the validation metric alone (``scripts/select_cnf.py``); every
Figure 4/5 schedule ends with a decay (``decay_at``, ``decay_factor``) so the final iterate settles.

``flow`` is ``planar`` (K = ``size`` layers), ``cnf`` (the paper's hypernetwork CNF with M = ``size`` units)
or ``ffjord`` (an MLP CNF of width ``size``, Hutchinson trace in training, exact trace in evaluation).

    python experiments/cnf.py data=U1 flow=cnf size=32              # budget=auto: paper with CUDA, else cpu
    python experiments/cnf.py data=moons flow=planar size=64 budget=smoke
    python experiments/cnf.py -m data=U1,U3c,U4c flow=planar,cnf size=2,8,32 hydra/launcher=joblib
    make reproduce-cnf BUDGET=cpu JOBS=2
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from ndode import SolverError
from ndode.data.toy2d import (
    DATASETS,
    PLOT_BOX,
    QUAD_BOX,
    TARGETS,
    check_name,
    energy,
    grid_kl,
    log_z,
    outside_box,
    quadrature_grid,
    sample_data,
)
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
from ndode.models.cnf import CNF, ConcatMLPDynamics, HyperPlanarDynamics
from ndode.models.planar import PlanarFlow

MODELS = ("planar", "cnf", "ffjord")
OPTIMIZERS = ("adam", "rmsprop")
PROBES = ("rademacher", "gaussian")
FIG5_FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def plan_key(data: str, model: str) -> str:
    """Which entry of ``budget.plan`` a run uses: ``density_<model>`` for a target, ``mle_<model>`` for data."""
    kind = "density" if data in TARGETS else "mle"
    if model not in MODELS or (kind == "density" and model == "ffjord"):
        model = "cnf"  # an invalid choice: CNFConfig.validate reports it (with the known names) before any work
    return f"{kind}_{model}"


if not OmegaConf.has_resolver("ndode_cnf_plan"):
    OmegaConf.register_new_resolver("ndode_cnf_plan", plan_key)


@dataclass
class Plan:
    """The schedule of one (task, model) pair inside a budget."""

    steps: int = ranged(100, ge=1)
    batch_size: int = ranged(512, ge=1)
    optim: str = "adam"
    lr: float = ranged(1e-3, gt=0)
    momentum: float = ranged(0.0, ge=0)  # RMSprop only
    # the learning rate is multiplied by decay_factor from iteration round(decay_at · steps) on (1: no decay). A
    # constant rate leaves the last iterate wandering by about ±0.02 nats (issue 24), more than the gaps compared
    decay_at: float = ranged(0.7, gt=0, le=1)
    decay_factor: float = ranged(1.0, gt=0, le=1)
    log_every: int = ranged(10, ge=1)
    eval_every: int = ranged(0, ge=0)
    checkpoint_every: int = ranged(0, ge=0)
    progress_every: int = ranged(0, ge=0)

    def validate(self, path: str) -> None:
        if self.optim not in OPTIMIZERS:
            raise ConfigError(f"{path}.optim={self.optim!r} is not one of {list(OPTIMIZERS)}")


@dataclass
class CNFBudget(BudgetConfig):
    # per (task, model): density_planar, density_cnf, mle_planar, mle_cnf, mle_ffjord; the harness's
    # steps/log_every/... come from the run's entry (see configs/budget/cnf/*.yaml)
    plan: dict[str, Plan] = field(default_factory=dict)
    batch_size: int = ranged(512, ge=1)
    momentum: float = ranged(0.0, ge=0)
    decay_at: float = ranged(0.7, gt=0, le=1)
    decay_factor: float = ranged(1.0, gt=0, le=1)
    kl_samples: int = ranged(10000, ge=1)  # samples of q for the final KL estimate (density matching)
    kl_grid: int = ranged(200, ge=2)  # forward KL(p‖q): midpoint nodes per axis over [−6, 6]² (density matching)
    val_size: int = ranged(2000, ge=2)  # validation: fixed base draws (density) or held-out points (data)
    test_size: int = ranged(5000, ge=1)  # held-out test sample (maximum likelihood)
    grid: int = ranged(100, ge=1)  # density plots: grid points per axis
    plot_samples: int = ranged(2000, ge=1)  # samples drawn in the figures


@dataclass
class ArchConfig:
    """Architecture details that the sweeps do not vary."""

    hyper_hidden: int = ranged(32, ge=1)  # the paper's CNF: hidden units of the hypernetwork of t (torchdiffeq examples/cnf.py)
    cnf_t1: float = ranged(10.0, gt=0)  # the paper's CNF integrates t in [0, 10] (torchdiffeq examples/cnf.py)
    ffjord_layers: int = ranged(3, ge=1)  # FFJORD train_toy.py: 64-64-64
    ffjord_t1: float = ranged(0.5, gt=0)  # FFJORD train_toy.py: time_length 0.5 (fixed here, trainable there)
    probe: str = "rademacher"  # Hutchinson probes for ffjord training: rademacher | gaussian
    base_var: Optional[float] = ranged(None, gt=0)  # variance of the Gaussian base; None: 0.1 for circles/moons, else 1

    def validate(self, path: str) -> None:
        if self.probe not in PROBES:
            raise ConfigError(f"{path}.probe={self.probe!r} is not one of {list(PROBES)}")


@dataclass
class CNFConfig(ExperimentConfig):
    data: str = "U1"  # a target (U1, U2c, U3c, U4c) or a data set (circles, moons, 8gaussians, ...)
    flow: str = "cnf"  # planar | cnf | ffjord
    size: int = ranged(32, ge=1)  # K planar layers | M CNF units | FFJORD hidden width
    # the run's optimiser and learning rate; default (configs/cnf.yaml): the budget plan's entry for (task, flow).
    # Top-level so that a selection candidate or a chosen value reads `optim=rmsprop lr=0.0003` in the run name
    optim: str = "adam"  # adam | rmsprop
    lr: float = ranged(1e-3, gt=0)
    arch: ArchConfig = field(default_factory=ArchConfig)
    budget: CNFBudget = field(default_factory=CNFBudget)

    def validate(self, path: str) -> None:
        super().validate(path)
        try:
            kind = check_name(self.data, "data")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.flow not in MODELS:
            raise ConfigError(f"flow={self.flow!r} is not one of {list(MODELS)}")
        if self.optim not in OPTIMIZERS:
            raise ConfigError(f"optim={self.optim!r} is not one of {list(OPTIMIZERS)}")
        if kind == "target" and self.flow == "ffjord":
            raise ConfigError(f"flow=ffjord is for maximum likelihood on a data set ({list(DATASETS)}); "
                              f"data={self.data!r} is a target: use flow=planar or flow=cnf")


register_schema("cnf_schema", CNFConfig)


class NonFiniteLoss(RuntimeError):
    """Training produced a non-finite loss or gradient; the optimizer step was not taken."""


def build_model(cfg, device) -> torch.nn.Module:
    """The flow of a config (also used by the tests and the benchmark)."""
    a = cfg.arch
    base_var = a.base_var if a.base_var is not None else (0.1 if cfg.data in ("circles", "moons") else 1.0)
    if cfg.flow == "planar":
        orientation = "generative" if cfg.data in TARGETS else "normalizing"
        return PlanarFlow(2, cfg.size, orientation, base_var).to(device)
    solver = solver_kwargs(cfg.solver)
    if cfg.flow == "cnf":
        return CNF(HyperPlanarDynamics(2, cfg.size, a.hyper_hidden), a.cnf_t1, base_var, solver).to(device)
    return CNF(ConcatMLPDynamics(2, cfg.size, a.ffjord_layers), a.ffjord_t1, base_var, solver).to(device)


class CNFTask(Task):
    def __init__(self, cfg, ctx: RunContext):
        self.cfg, self.device, self.run_dir = cfg, ctx.device, ctx.run_dir
        self.density = cfg.data in TARGETS
        # selection and the best-so-far summary read the validation metric only; the test metrics come once, after
        # training (analyze), and nothing is chosen on them
        self.goals = {"kl_val": "min"} if self.density else {"nll_val": "min"}
        self.model = build_model(cfg, self.device)
        b = cfg.budget
        if cfg.optim == "adam":
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        else:
            self.optimizer = torch.optim.RMSprop(self.model.parameters(), lr=cfg.lr, momentum=b.momentum)
        self.decay_step = int(round(b.decay_at * b.steps))
        if b.decay_factor < 1:
            # a step decay (the probes: 1000 iterations, then 300 at a tenth of the rate); the harness steps
            # the scheduler after each iteration, so iteration s (0-based) runs at the rate of factor(s)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda s: b.decay_factor if s >= self.decay_step else 1.0)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # base samples (density) and probes; checkpointed
        self.rng = np.random.default_rng(cfg.seed)  # training data (fresh samples every iteration)
        if self.density:
            self.log_z = log_z(cfg.data)  # quadrature (toy2d.log_z): the loss is then the true KL, not KL − log Z
            # validation: fixed base draws of this run's own stream (not those of the final estimate)
            self.val_z = self.model.base_sample(b.val_size, torch.Generator().manual_seed(3 * 10**6 + cfg.seed))
        else:
            # held-out validation and test samples: each its own stream, the same for every seed and model
            self.val_x = sample_data(cfg.data, b.val_size, np.random.default_rng(10**6 + 1)).to(self.device)
            self.test_x = sample_data(cfg.data, b.test_size, np.random.default_rng(10**6)).to(self.device)
        self.tally = {"n": 0, "nfe_forward": 0, "nfe_backward": 0, "loss": None}

    @property
    def is_cnf(self) -> bool:
        return isinstance(self.model, CNF)

    def _probe(self, x):
        if self.cfg.flow != "ffjord":
            return None
        if self.cfg.arch.probe == "gaussian":
            return torch.randn(x.shape, generator=self.gen).to(x)
        return (torch.randint(0, 2, x.shape, generator=self.gen) * 2 - 1).to(x)

    def train_step(self, step: int) -> dict:
        b, m = self.cfg.budget, self.model
        try:
            if self.density:
                z = m.base_sample(b.batch_size, self.gen)
                x, logq = m.transform(z)
                # KL(q‖p) = E_q[log q + U] + log Z; the constant changes no gradient but makes the loss ≥ 0 in
                # expectation, so learning curves read as distances to the target
                loss = (logq + energy(self.cfg.data, x)).mean() + self.log_z
            else:
                x = sample_data(self.cfg.data, b.batch_size, self.rng).to(self.device)
                if self.is_cnf:
                    m.set_probe(self._probe(x))
                loss = -m.log_prob(x).mean()
        except SolverError as e:
            raise NonFiniteLoss(f"iteration {step + 1}: the forward solve failed ({e}); {self._kept()}") from e
        nfe_f = m.last.nfe if self.is_cnf else None
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"non-finite loss {loss.item()} at iteration {step + 1} (NFE-F {nfe_f}); the optimizer "
                                f"step was not taken; {self._kept()}")
        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss.backward()
        except SolverError as e:
            raise NonFiniteLoss(f"iteration {step + 1}: the adjoint solve failed (NFE-F {nfe_f}): {e}; "
                                f"{self._kept()}") from e
        finally:
            if self.is_cnf:
                m.set_probe(None)
        nfe_b = m.last.nfe_backward if self.is_cnf else None
        grads = [p.grad for p in m.parameters() if p.grad is not None]
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            raise NonFiniteLoss(f"non-finite gradient at iteration {step + 1} (NFE-F {nfe_f}, NFE-B {nfe_b}); the "
                                f"optimizer step was not taken; {self._kept()}")
        self.optimizer.step()
        self.tally["n"] += 1
        self.tally["loss"] = loss.item()
        if self.is_cnf:
            self.tally["nfe_forward"] += nfe_f
            self.tally["nfe_backward"] += nfe_b or 0
        # the rate this iteration used (the harness steps the decay after it): the learning curves show the decay
        return {"loss": loss.item(), "lr": self.optimizer.param_groups[0]["lr"], "nfe_forward": nfe_f,
                "nfe_backward": nfe_b}

    def _kept(self) -> str:
        ckpt = self.run_dir / "checkpoint.pt"
        return (f"the last good checkpoint {ckpt} is kept: the same command resumes from it; to continue with other "
                "settings (e.g. a smaller lr or tighter tolerances) copy it into the new run's directory first"
                if ckpt.exists() else "no checkpoint was written yet (budget.checkpoint_every)")

    def _transform(self, z):
        return self.model.transform(z, adjoint=False) if self.is_cnf else self.model.transform(z)

    def _log_prob(self, x):
        return self.model.log_prob(x, adjoint=False) if self.is_cnf else self.model.log_prob(x)

    def _kl_terms(self, z) -> tuple[torch.Tensor, torch.Tensor]:
        """Per base draw: ``log q(x) + U(x) + log Z`` (its mean estimates KL(q‖p)) and the sample ``x``."""
        x, logq = self._transform(z)
        return logq + energy(self.cfg.data, x) + self.log_z, x

    def evaluate(self) -> dict:
        """The validation metric (every ``eval_every`` and at the end): what learning rates are chosen on."""
        if self.density:
            out = {"kl_val": self._kl_terms(self.val_z)[0].mean().item()}
        else:
            out = {"nll_val": -self._log_prob(self.val_x).mean().item()}
        if self.is_cnf:
            out["nfe_eval"] = self.model.last.nfe
        return out

    def analyze(self, run_dir: Path) -> dict:
        """The reported metrics, once, after training (never used for any choice).

        Density matching: the true KL(q‖p) from ``kl_samples`` draws (its own stream) with its standard error, the
        share of those draws outside the plotted box ``[−4, 4]²`` (and the target's own share there), and the
        forward KL(p‖q) by the midpoint rule on ``kl_grid²`` nodes over ``[−6, 6]²``. Data: the test NLL."""
        b, m = self.cfg.budget, self.model
        out: dict = {}
        with torch.no_grad():
            if self.density:
                z = m.base_sample(b.kl_samples, torch.Generator().manual_seed(10**6 + self.cfg.seed))
                kl, x = self._kl_terms(z)
                out.update(kl=kl.mean().item(), kl_se=(kl.std() / math.sqrt(len(kl))).item(),
                           mass_out=outside_box(x).double().mean().item(), log_z=self.log_z)
                _, grid, area = quadrature_grid(b.kl_grid, QUAD_BOX, dtype=torch.float32)
                log_p = -energy(self.cfg.data, grid.double())
                log_q = torch.cat([self._log_prob(c.to(self.device)).cpu() for c in grid.split(20000)])
                w = torch.softmax(log_p, 0)
                out.update(kl_fwd=grid_kl(log_p, log_q, area),
                           target_mass_out=float(w[outside_box(grid)].sum()))
            else:
                lp = self._log_prob(self.test_x)
                out.update(nll_test=-lp.mean().item(), nll_test_se=(lp.std() / math.sqrt(len(lp))).item())
            if self.is_cnf:
                out["nfe_test"] = m.last.nfe
        return out

    def summary(self, final_eval: dict, final_train: dict) -> dict:
        n = max(self.tally["n"], 1)
        return {**final_eval, "task": "density" if self.density else "mle", "train_loss": self.tally["loss"],
                "decay_step": self.decay_step if self.cfg.budget.decay_factor < 1 else None,
                "nfe_forward": self.tally["nfe_forward"] / n if self.is_cnf else None,
                "nfe_backward": self.tally["nfe_backward"] / n if self.is_cnf else None,
                "nfe_forward_last": final_train.get("nfe_forward"),
                "nfe_backward_last": final_train.get("nfe_backward"),
                "params": sum(p.numel() for p in self.model.parameters())}

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "rng": self.rng.bit_generator.state, "tally": dict(self.tally)}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.rng.bit_generator.state = state["rng"]
        self.tally = dict(state["tally"])

    def make_figures(self, run_dir: Path) -> None:
        """Arrays for the report's figures (arrays/cnf.npz); the figures themselves are drawn by
        scripts/make_figures.py from many runs at once."""
        b, m = self.cfg.budget, self.model
        g = torch.Generator().manual_seed(2 * 10**6 + self.cfg.seed)
        arrays = {}
        with torch.no_grad():
            if self.density:
                lim = PLOT_BOX
                axis = torch.linspace(-lim, lim, b.grid)
                grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2).to(self.device)
                x, _ = m.transform(m.base_sample(b.plot_samples, g))
                lq = m.log_prob(grid, adjoint=False) if self.is_cnf else m.log_prob(grid)
                arrays.update(axis=axis, logq=lq.reshape(b.grid, b.grid), samples=x,
                              log_target=-energy(self.cfg.data, grid).reshape(b.grid, b.grid))
            else:
                lim = 1.6 if self.cfg.data in ("circles", "moons") else 4.0
                axis = torch.linspace(-lim, lim, b.grid)
                grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2).to(self.device)
                arrays.update(axis=axis, data=sample_data(self.cfg.data, b.plot_samples, np.random.default_rng(7)))
                z = m.base_sample(b.plot_samples, g)
                fracs = FIG5_FRACTIONS if self.cfg.data in ("circles", "moons") else (1.0,)
                samples, dens = [], []
                for f in fracs:
                    s, lp = m.partial(z, grid, f)
                    samples.append(s)
                    dens.append(lp.reshape(b.grid, b.grid))
                arrays.update(fractions=torch.tensor(fracs), samples=torch.stack(samples), logq=torch.stack(dens))
        arrays = {k: v.detach().cpu().numpy() for k, v in arrays.items()}
        (run_dir / "arrays").mkdir(exist_ok=True)
        atomic_save(run_dir / "arrays" / "cnf.npz", lambda tmp: np.savez_compressed(tmp, **arrays))

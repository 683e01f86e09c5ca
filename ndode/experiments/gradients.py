"""The gradient study (docs/gradients.md): how accurate is the paper's backsolve adjoint on its own trained models?

One run differentiates one trained model's loss on one fixed batch at one tolerance (rtol = atol = ``tol``) by
every gradient method of ``ndode.gradients.METHODS`` (direct backprop, the checkpointed adjoint, the backsolve
adjoint with the seminorm and with the full norm), and records each gradient's relative error and cosine against
the checkpointed adjoint's (the exact gradient of the same discrete solve, itself checked against direct
backprop), NFE-F, NFE-B, time and the bytes saved for backward, all in this one process.

``source`` names the trained model: ``mnist`` (the ODE-Net), ``cnf`` (Figure 5, Two Moons, M = 64),
``latent_ode`` (n = 30) or ``latent_poisson`` (the Poisson-process latent ODE). Its run directory is the one
``make reproduce-<experiment>`` made at the same budget and ``source_seed`` (found under ``run_root`` by its
config), or ``source_run=<dir>``; its final checkpoint gives the weights, its config.yaml the model and data, and
its experiment's own module (:mod:`ndode.experiments.mnist`, ...) the task that rebuilds them.

    python experiments/gradients.py source=cnf tol=1e-5                 # budget=auto: paper with CUDA, else cpu
    python experiments/gradients.py -m source=mnist,cnf,latent_ode,latent_poisson tol=1e-3,1e-5,1e-7
    make reproduce-gradients BUDGET=cpu                                 # sources, study, training runs, table
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from ndode.gradients import METHODS, GradientProblem, compare, measure
from ndode.harness import (
    BudgetConfig,
    ConfigError,
    ExperimentConfig,
    RunContext,
    RunRecord,
    RunRecordError,
    Task,
    ddp,
    load_runs,
    ranged,
    register_schema,
)

__all__ = ["SOURCES", "GradientsConfig", "GradientsTask", "find_source_run", "load_source"]


@dataclass(frozen=True)
class Source:
    """A trained model the study reads: which experiment made it, how to recognise its run, how to rebuild it."""

    experiment: str  # the run record's experiment (its folder under run_root; ndode.experiments.<experiment>)
    match: dict  # flattened config values its run has (a callable: a test of the value)
    reproduce: str  # the command that makes it
    schema: str  # the schema and task classes of ndode.experiments.<experiment>
    task: str


SOURCES: dict[str, Source] = {
    # the ODE-Net, not RK-Net (the same architecture without an adjoint)
    # (v == v: not NaN, the collector's value for a record without the key)
    "mnist": Source("mnist", {"model.name": "odenet",
                              "solver.adjoint": lambda v: v == v and v not in ("none", False, None)},
                    "make reproduce-mnist", "MNISTConfig", "MNISTTask"),
    "cnf": Source("cnf", {"data": "moons", "flow": "cnf", "size": 64}, "make reproduce-cnf", "CNFConfig", "CNFTask"),
    "latent_ode": Source("latent_ode", {"model.name": "latent_ode", "data.n_obs": 30}, "make reproduce-latent-ode",
                         "LatentODEConfig", "LatentODETask"),
    "latent_poisson": Source("latent_poisson", {"model.poisson": True}, "make reproduce-poisson",
                             "LatentPoissonConfig", "PoissonTask"),
}


@dataclass
class GradientsBudget(BudgetConfig):
    repeats: int = ranged(1, ge=0)  # timed forward+backward passes per method after the measured one (median)
    batch_size: Optional[int] = ranged(None, ge=1)  # the fixed batch; None: the source run's training batch size
    # the checkpointed adjoint once more at this tighter tolerance: how far every gradient is from the ODE's
    # (``rel_err_tight``); None or >= tol: skipped
    ref_tol: Optional[float] = ranged(1e-7, gt=0, lt=1)


@dataclass
class GradientsConfig(ExperimentConfig):
    source: str = "cnf"  # mnist | cnf | latent_ode | latent_poisson
    tol: float = ranged(1e-3, gt=0, lt=1)  # rtol = atol of every solve, forward and backward
    source_run: Optional[str] = None  # the trained run's directory; None: found under run_root (SOURCES)
    source_seed: int = ranged(0, ge=0)  # which seed's run, when found
    batch_seed: int = ranged(0, ge=0)  # the fixed batch and every random draw of the loss
    methods: List[str] = field(default_factory=lambda: list(METHODS))
    budget: GradientsBudget = field(default_factory=GradientsBudget)

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.source not in SOURCES:
            raise ConfigError(f"source={self.source!r} is not one of {list(SOURCES)}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"methods={list(self.methods)}: {bad} not in {list(METHODS)}")
        if "checkpoint" not in self.methods:
            raise ConfigError(f"methods={list(self.methods)} must include 'checkpoint': the reference gradient")
        if self.budget.steps != 1:
            raise ConfigError(f"budget.steps={self.budget.steps}: a gradient-study run is one measurement (1)")


register_schema("gradients_schema", GradientsConfig)


# ---- the source runs
def _matches(flat: dict, match: dict) -> bool:
    for k, want in match.items():
        v = flat.get(k)
        if callable(want) and not want(v):
            return False
        if not callable(want) and v != want:
            return False
    return True


def find_source_run(run_root: str | Path, source: str, budget: str, seed: int) -> Path:
    """The finished run of ``source`` at ``budget`` and ``seed`` under ``run_root``; a clear error if there is none
    or more than one (then ``source_run=`` says which)."""
    if source not in SOURCES:
        raise ConfigError(f"source={source!r} is not one of {list(SOURCES)}")
    s = SOURCES[source]
    root = Path(run_root) / s.experiment
    # the collector's reading of the records (flattened configs, status; an unreadable record left out with a line)
    runs = load_runs(root, finished_only=False).to_dict("records") if root.is_dir() else []
    found, unfinished = [], []
    for r in runs:
        if (r.get("experiment") == s.experiment and str(r.get("budget.name")) == budget
                and r.get("seed") == seed and _matches(r, s.match)):
            (found if r["status"] == "done" else unfinished).append(Path(r["run_dir"]))
    if len(found) == 1:
        return found[0]
    want = ", ".join(f"{k}={'<adjoint>' if callable(v) else v}" for k, v in s.match.items())
    if not found:
        more = f" ({len(unfinished)} unfinished: {', '.join(p.name for p in unfinished)})" if unfinished else ""
        raise RunRecordError(f"source={source}: no finished {s.experiment} run with {want}, budget={budget}, "
                             f"seed={seed} under {root}{more}; make it with `{s.reproduce} BUDGET={budget}` "
                             f"(or `make reproduce-gradients BUDGET={budget}`), or pass source_run=<run directory>")
    raise RunRecordError(f"source={source}: {len(found)} finished runs match under {root} "
                         f"({', '.join(p.name for p in found)}); pass source_run=<one of them>")


def load_source(run_dir: str | Path, source: str, device: torch.device, batch_size: int | None = None,
                batch_seed: int = 0) -> tuple[Any, GradientProblem]:
    """The trained model of a source run (its final checkpoint) and its loss on a fixed batch as a
    :class:`~ndode.gradients.GradientProblem`; returns ``(task, problem)``.

    The model and its loss are the source experiment's own (its Task, built from the run's config.yaml), so the
    study differentiates exactly what training differentiated.
    """
    run_dir = Path(run_dir)
    if source not in SOURCES:
        raise ConfigError(f"source={source!r} is not one of {list(SOURCES)}")
    s = SOURCES[source]
    rec = RunRecord(run_dir, writer=False)
    if not rec.done or not rec.path("checkpoint.pt").exists():
        raise RunRecordError(f"source run {run_dir} is not a finished run with a checkpoint.pt (done marker and "
                             f"final checkpoint); make it with `{s.reproduce}` or pass another source_run")
    raw = rec.read_config() or {}
    if raw.get("experiment") != s.experiment:
        raise RunRecordError(f"source run {run_dir} is a {raw.get('experiment')!r} run, not {s.experiment!r} "
                             f"(source={source})")
    mod = importlib.import_module(f"ndode.experiments.{s.experiment}")  # only the source's own
    cfg = OmegaConf.merge(OmegaConf.structured(getattr(mod, s.schema)), raw)
    cfg.device = str(device)
    ctx = RunContext(run_dir=run_dir, device=device, seed=int(cfg.seed), dist=ddp.env())
    torch.manual_seed(batch_seed)
    task = getattr(mod, s.task)(cfg, ctx)
    ckpt = torch.load(rec.path("checkpoint.pt"), map_location="cpu", weights_only=False)
    task.model.load_state_dict(ckpt["model"])
    task.model.to(device).train()  # gradients as training sees them
    params = [p for p in task.model.parameters() if p.requires_grad]
    bs = batch_size or int(cfg.budget.batch_size or 0) or None
    nfe: Callable[[], tuple[int | None, int | None]]

    if s.experiment == "mnist":
        torch.manual_seed(batch_seed)  # the training set's random crops
        x, y = task.first_batch(task.train, bs or 128)
        blocks = task.blocks

        def loss(adjoint, rtol, atol):
            for b in blocks:
                b.set_tolerance(rtol, atol)
                b.adjoint = adjoint
            return task.loss(task.model(x), y)

        def nfe():
            back = [b.nfe_backward for b in blocks]
            return sum(b.nfe_forward or 0 for b in blocks), None if None in back else sum(back)

        ode_params = [p for b in blocks for p in b.func.parameters() if p.requires_grad]
        options = blocks[0].options  # every block's: built from one solver config
    elif s.experiment == "cnf":
        from ndode.data.toy2d import sample_data

        m = task.model
        x = sample_data(cfg.data, bs or 512, np.random.default_rng(batch_seed)).to(device)

        def loss(adjoint, rtol, atol):
            m.solver = dict(m.solver, rtol=rtol, atol=atol, adjoint=adjoint)
            return -m.log_prob(x).mean()

        def nfe():
            return m.last.nfe, m.last.nfe_backward

        ode_params = [p for p in m.dynamics.parameters() if p.requires_grad]
        options = m.solver.get("options")
    else:  # latent_ode, latent_poisson: the task's training objective, the negative ELBO (one reparameterised sample)
        n = len(task.train)
        data = task.train.subset(range(min(bs or n, n)))
        last: dict = {}

        def loss(adjoint, rtol, atol):
            task.solver = dict(task.solver, rtol=rtol, atol=atol, adjoint=adjoint)
            torch.manual_seed(batch_seed)  # the same z0 sample for every method
            value, _, last["stats"] = task.objective(data, 0)
            return value

        def nfe():
            st = last["stats"]
            return st.nfe, st.nfe_backward

        ode_params = [p for p in task.model.ode_func.parameters() if p.requires_grad]
        options = task.solver.get("options")
    return task, GradientProblem(loss=loss, nfe=nfe, params=params, ode_params=ode_params, options=options)


class GradientsTask(Task):
    """One unit: every method's gradient at ``tol``; the summary holds the comparison (``ndode.gradients.compare``)."""

    def __init__(self, cfg, ctx: RunContext):
        self.cfg = cfg
        if cfg.source_run:
            src = Path(cfg.source_run)
        else:
            src = find_source_run(cfg.run_root, cfg.source, str(cfg.budget.name), cfg.source_seed)
        self.source_dir = src
        self.source_task, self.problem = load_source(src, cfg.source, ctx.device, cfg.budget.batch_size,
                                                     cfg.batch_seed)
        self.model = self.source_task.model
        meta = RunRecord(src, writer=False).read_meta()
        git = meta.get("git") or {}
        self.source_info = {"source_run_name": src.name, "source_commit": git.get("commit"),
                            "source_dirty": git.get("dirty"), "source_experiment": SOURCES[cfg.source].experiment,
                            "n_params": sum(p.numel() for p in self.problem.params),
                            "n_params_ode": sum(p.numel() for p in self.problem.ode_params)}
        self.results: dict = {}

    def train_step(self, step: int) -> dict:
        cfg, b = self.cfg, self.cfg.budget
        measured = {m: measure(self.problem, m, cfg.tol, b.repeats) for m in cfg.methods}
        tight = measured["checkpoint"] if b.ref_tol == cfg.tol else None
        if b.ref_tol is not None and b.ref_tol < cfg.tol:
            tight = measure(self.problem, "checkpoint", b.ref_tol, 0)
            if tight.error is not None:
                raise RuntimeError(f"the reference solve at ref_tol={b.ref_tol} failed: {tight.error}")
        if measured["checkpoint"].error is not None:
            raise RuntimeError(f"the checkpointed adjoint (the reference) failed at tol={cfg.tol}: "
                               f"{measured['checkpoint'].error}")
        self.results = compare(measured, tight=tight)
        if tight is not None:
            self.results["tight_nfe_forward"] = tight.nfe_forward
        # the console line and metrics.jsonl: times only (errors may be inf or NaN where a method fails; they go to
        # the summary, which is the study's result, not to the non-finite guard)
        return {f"time_{m}": v.time_s for m, v in measured.items() if v.error is None}

    def summary(self, final_eval: dict, final_train: dict) -> dict:
        return {**self.source_info, **self.results}

    def state_dict(self) -> dict:
        return {"results": self.results}

    def load_state_dict(self, state: dict) -> None:
        self.results = dict(state.get("results") or {})

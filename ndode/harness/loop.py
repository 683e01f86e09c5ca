"""The one training loop every experiment shares.

An experiment supplies a :class:`Task` (its model, optimizer, data and what
one training unit does); :func:`run_experiment` owns everything around it: the
run directory, config and meta files, seeding, the step loop, metric records
and the W&B mirror, evaluation and checkpoint cadence from the budget,
resume, console progress, the summary and the ``done`` marker.

A training *unit* is one call of ``Task.train_step``: an iteration for the
CNF, latent-ODE and demo experiments, an epoch for MNIST. The budget says how
many units a run has and how often to log, evaluate, checkpoint and print.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import NAME_EXCLUDED_KEYS, ConfigError, to_plain, validate
from .record import RunRecord, RunRecordError, atomic_save, flatten, now_iso
from .wandb_mirror import WandbMirror

__all__ = ["Task", "RunContext", "Runner", "run_experiment", "seed_everything", "resolve_device", "hydra_run_dir"]

log = logging.getLogger("ndode.harness")
CHECKPOINT_VERSION = 1
PROGRESS_SECONDS = 30.0  # a console line at least this often, whatever the budget's progress_every


@dataclass
class RunContext:
    """What the harness hands a task when it is built."""

    run_dir: Path
    device: torch.device
    seed: int
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class Task:
    """What an experiment gives the harness; subclass it.

    Set ``self.model`` (an ``nn.Module``) and, for training, ``self.optimizer``;
    ``self.scheduler`` (optional) is stepped by the harness once per unit.
    ``goals`` maps evaluation metrics to ``"min"`` or ``"max"``: their best
    value so far is kept in the summary (``best_<metric>``) and in W&B.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    goals: dict[str, str] = {}
    # evaluate() runs in eval mode and, unless this is False, under torch.no_grad()
    # (a CNF needs autograd inside its dynamics to evaluate log-densities)
    eval_no_grad: bool = True

    def train_step(self, step: int) -> dict[str, float]:
        """Run training unit ``step`` (0-based); return its metrics (numbers; None is skipped)."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Metrics of the current model on held-out data."""
        return {}

    def analyze(self, run_dir: Path) -> dict[str, Any]:
        """Work on the trained model after the last unit (a memory probe, a tolerance sweep...).

        Runs once, as its own phase (a console line, an ``analysis`` record in
        metrics.jsonl); may write arrays under ``run_dir / "arrays"``. The
        returned metrics join the summary.
        """
        return {}

    def summary(self, final_eval: dict, final_train: dict) -> dict:
        """The final metrics for summary.json (default: last evaluation + last train interval as ``train_*``)."""
        return {**final_eval, **{f"train_{k}": v for k, v in final_train.items()}}

    def state_dict(self) -> dict:
        """Extra state to checkpoint beyond model/optimizer/scheduler/global RNGs (data position, generators)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def make_figures(self, run_dir: Path) -> None:
        """Write figures (and the arrays they are drawn from) into the run directory, once at the end."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def hydra_run_dir() -> Path | None:
    """The output directory Hydra chose for this job, or None outside ``@hydra.main``."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.output_dir)
    except ImportError:
        pass
    return None


def _hydra_overrides() -> list[str] | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return list(HydraConfig.get().overrides.task)
    except ImportError:
        pass
    return None


def _remove_unused_hydra_dir(path: Path) -> None:
    """Remove the directory Hydra made for a job that failed validation, if it holds only Hydra's files."""
    try:
        entries = list(path.iterdir())
        if all(p.name == ".hydra" or (p.is_file() and p.suffix == ".log") for p in entries):
            shutil.rmtree(path)
    except OSError:
        pass


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _identity(config: dict) -> dict:
    """The config keys that decide what a run computes (for comparing a reused run directory)."""
    flat = flatten(config)
    return {k: v for k, v in flat.items() if not any(k == x or k.startswith(x + ".") for x in NAME_EXCLUDED_KEYS
                                                      if x not in ("seed", "budget"))}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _Means:
    """Running means of the numbers a task reports over one logging interval."""

    def __init__(self, state: dict | None = None):
        self.sums: dict[str, float] = dict((state or {}).get("sums", {}))
        self.counts: dict[str, int] = dict((state or {}).get("counts", {}))

    def add(self, metrics: dict) -> None:
        for k, v in metrics.items():
            if v is None:
                continue
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def pop(self) -> dict:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums, self.counts = {}, {}
        return out

    def state(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}



class Runner:
    """One run of one experiment, in named phases.

    ``setup`` (validate the config, claim the run directory, build the task),
    ``resume`` (from the checkpoint, if any), ``train`` (the unit loop, with
    ``evaluate``, ``checkpoint`` and ``progress`` on the budget's cadence),
    ``analyze`` (the task's post-training work) and ``finish`` (summary,
    figures, meta, ``done``). :meth:`run` calls them in that order.
    """

    def __init__(self, cfg, make_task: Callable[[Any, RunContext], Task], run_dir: str | os.PathLike | None = None):
        self.cfg, self.make_task, self.run_dir = cfg, make_task, run_dir
        self.start = 0
        self.step = 0  # the unit whose metrics are being recorded
        # what a checkpoint carries besides the task's state
        self.hstate = {"means": None, "elapsed": 0.0, "last_eval": {}, "last_eval_step": 0, "last_train": {},
                       "best": {}}
        self.analysis: dict = {}

    # ---- phases
    def run(self) -> dict:
        """Run (or resume, or skip) the run; return its summary."""
        if not self.setup():
            return self.record.read_summary() or {}
        self.resume()
        exit_code = 1
        try:
            self.train()
            self.analyze()
            summary = self.finish()
            exit_code = 0
        finally:
            self.mirror.finish(exit_code)
            self.record.close()
        self.record.mark_done()
        log.info("done: %s | %s | %s", self.record.dir,
                 " ".join(f"{k} {_fmt(v)}" for k, v in summary.items() if isinstance(v, (int, float))),
                 _fmt_time(summary["wall_time_s"]))
        return summary

    def setup(self) -> bool:
        """Validate, claim the run directory and build the task; False when the run is already finished."""
        cfg = self.cfg
        hydra_dir = hydra_run_dir() if self.run_dir is None else None
        try:
            validate(cfg)  # ranges, consistency, `+key` additions; names and types were checked when Hydra composed cfg
        except ConfigError as e:
            if hydra_dir is None:
                raise
            _remove_unused_hydra_dir(hydra_dir)
            raise SystemExit(f"config error: {e}") from None  # a message, not a traceback, on the command line
        self.config = to_plain(cfg)
        run_dir = self.run_dir if self.run_dir is not None else hydra_dir
        if run_dir is None:
            raise RunRecordError("no run_dir given and not running under @hydra.main; pass run_dir=...")
        self.rank, self.world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        self.record = record = RunRecord(run_dir, writer=self.rank == 0)
        self.name, self.budget = record.dir.name, cfg.budget
        if record.done:
            log.info("skip: %s is finished (found its 'done' marker); delete the directory to run it again", record.dir)
            return False

        record.dir.mkdir(parents=True, exist_ok=True)
        old = record.read_config()
        if old is not None and _identity(old) != _identity(self.config):
            a, b = _identity(old), _identity(self.config)
            diff = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
            raise RunRecordError(
                f"{record.dir} holds a run with a different config (differs in {diff}); "
                "delete that directory or change the overrides/seed")
        record.write_config(self.config)

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        ctx = RunContext(run_dir=record.dir, device=resolve_device(cfg.device), seed=cfg.seed, rank=self.rank,
                         world_size=self.world)
        self.task = self.make_task(cfg, ctx)
        return True

    def resume(self) -> None:
        """Load the checkpoint if there is one; start the meta record and the W&B mirror."""
        cfg, record, task, budget = self.cfg, self.record, self.task, self.budget
        resumed = record.checkpoint_path.exists()
        if resumed:
            ckpt = torch.load(record.checkpoint_path, map_location="cpu", weights_only=False)
            task.model.load_state_dict(ckpt["model"])
            if task.optimizer is not None and ckpt.get("optimizer") is not None:
                task.optimizer.load_state_dict(ckpt["optimizer"])
            if task.scheduler is not None and ckpt.get("scheduler") is not None:
                task.scheduler.load_state_dict(ckpt["scheduler"])
            task.load_state_dict(ckpt.get("task") or {})
            _set_rng_state(ckpt["rng"])
            self.start, self.hstate = int(ckpt["step"]), ckpt["harness"]
            dropped = record.truncate_metrics(self.start)
            log.info("resume: %s from its checkpoint at %s %d/%d (dropped %d later metric records)",
                     record.dir, budget.unit, self.start, budget.steps, dropped)
        else:
            record.truncate_metrics(0)  # records of an attempt killed before its first checkpoint
            log.info("start: %s (%s budget, %d %ss)", record.dir, budget.name, budget.steps, budget.unit)
        record.start_meta(extra={"experiment": cfg.experiment, "run_name": self.name, "overrides": _hydra_overrides()},
                          resumed_from=self.start if resumed else None)
        model_name = self.config["model"].get("name") if isinstance(self.config.get("model"), dict) else None
        self.mirror = WandbMirror(
            enabled=bool(cfg.logger.wandb) and self.rank == 0, mode=cfg.logger.mode, project=cfg.logger.project,
            entity=cfg.logger.entity, run_dir=record.dir, name=self.name, group=cfg.experiment,
            tags=[f"budget={budget.name}"] + ([f"model={model_name}"] if model_name else []),
            config={**self.config, "run_dir": str(record.dir)}, goals=task.goals, quiet=cfg.quiet)
        self.means = _Means(self.hstate["means"])
        self.t0, self.elapsed0 = time.perf_counter(), float(self.hstate["elapsed"])
        self.last_line = (self.t0, self.start)  # (time, unit) of the last console line: the ETA's pace

    def train(self) -> None:
        """Units ``start .. budget.steps``; log, evaluate, print and checkpoint on the budget's cadence."""
        task, budget, hstate = self.task, self.budget, self.hstate
        task.model.train()
        progress_every = budget.progress_every or budget.eval_every or budget.steps
        for step in range(self.start, budget.steps):
            self.step = s = step + 1
            metrics = task.train_step(step)
            if task.scheduler is not None:
                task.scheduler.step()
            self.means.add(metrics or {})
            last = s == budget.steps
            if s % budget.log_every == 0 or last:
                hstate["last_train"] = self.means.pop()
                self.emit("train", hstate["last_train"])
            if (budget.eval_every and s % budget.eval_every == 0) or last:
                self.evaluate()
            if s % progress_every == 0 or last or time.perf_counter() - self.last_line[0] > PROGRESS_SECONDS:
                self.progress()
            if (budget.checkpoint_every and s % budget.checkpoint_every == 0) or last:
                self.checkpoint()

    def evaluate(self) -> None:
        """``Task.evaluate`` in eval mode; keeps the best value of each goal metric."""
        task, hstate = self.task, self.hstate
        task.model.eval()
        try:
            with torch.set_grad_enabled(not task.eval_no_grad):
                metrics = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in task.evaluate().items()}
        finally:
            task.model.train()
        for k, goal in task.goals.items():
            if metrics.get(k) is not None:
                prev = hstate["best"].get(k)
                better = prev is None or (metrics[k] < prev if goal == "min" else metrics[k] > prev)
                hstate["best"][k] = metrics[k] if better else prev
        hstate["last_eval"], hstate["last_eval_step"] = metrics, self.step
        self.emit("eval", metrics)

    def analyze(self) -> None:
        """``Task.analyze`` on the trained model: its own console lines and ``analysis`` record."""
        if self.rank != 0:
            return
        log.log(self._level, "analyze: %s %s", self.cfg.experiment, self.name)
        t = time.perf_counter()
        self.analysis = dict(self.task.analyze(self.record.dir) or {})
        if self.analysis:
            self.emit("analysis", {**self.analysis, "analysis_time_s": round(time.perf_counter() - t, 3)})
        log.log(self._level, "analyze: done in %s", _fmt_time(time.perf_counter() - t))

    def finish(self) -> dict:
        """Summary, figures, the meta record's end time and the W&B summary; return the summary."""
        hstate, record = self.hstate, self.record
        summary = dict(self.task.summary(dict(hstate["last_eval"]), dict(hstate["last_train"])))
        summary.update(self.analysis)
        summary.update({f"best_{k}": v for k, v in hstate["best"].items()})
        summary.update({"steps": self.budget.steps, "unit": self.budget.unit, "wall_time_s": round(self.elapsed(), 3)})
        record.write_summary(summary)
        if self.rank == 0:
            (record.dir / "figures").mkdir(exist_ok=True)
            self.task.make_figures(record.dir)
        if record.writer:
            meta = record.read_meta()
            meta["finished"] = now_iso()
            meta["attempts"][-1]["finished"] = meta["finished"]
            record.write_meta(meta)
        self.mirror.summary(summary)
        return summary

    # ---- helpers of the phases
    @property
    def _level(self) -> int:
        return logging.DEBUG if self.cfg.quiet else logging.INFO

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t0

    def emit(self, kind: str, metrics: dict) -> None:
        """One record at the current unit: metrics.jsonl and the W&B mirror."""
        self.record.append_metrics({"step": self.step, "kind": kind, "time_s": round(self.elapsed(), 3), **metrics})
        self.mirror.log(self.step, kind, metrics)

    def progress(self) -> None:
        if self.rank != 0:
            return
        s, budget, hstate = self.step, self.budget, self.hstate
        now = time.perf_counter()
        # ETA from the pace since the last line: units can change cost (e.g. a final refinement phase)
        rate = (s - self.last_line[1]) / max(now - self.last_line[0], 1e-9)
        self.last_line = (now, s)
        eta = (budget.steps - s) / rate if rate > 0 else float("nan")
        train = " ".join(f"{k} {_fmt(v)}" for k, v in hstate["last_train"].items())
        ev = " ".join(f"{k} {_fmt(v)}" for k, v in hstate["last_eval"].items())
        line = (f"{self.cfg.experiment} {self.name} | {budget.unit} {s}/{budget.steps} ({100 * s / budget.steps:.0f}%)"
                f" | {train}" + (f" | eval@{hstate.get('last_eval_step')} {ev}" if ev else "")
                + f" | {_fmt_time(self.elapsed())} elapsed, ETA {_fmt_time(eta) if eta == eta else '?'}")
        log.log(self._level, line)

    def checkpoint(self) -> None:
        if self.rank != 0:
            return
        task, hstate = self.task, self.hstate
        hstate["means"], hstate["elapsed"] = self.means.state(), self.elapsed()
        state = {
            "version": CHECKPOINT_VERSION, "step": self.step, "saved": now_iso(),
            "model": task.model.state_dict(),
            "optimizer": task.optimizer.state_dict() if task.optimizer is not None else None,
            "scheduler": task.scheduler.state_dict() if task.scheduler is not None else None,
            "task": task.state_dict(), "rng": _rng_state(), "harness": hstate,
        }
        atomic_save(self.record.checkpoint_path, lambda tmp: torch.save(state, tmp))


def run_experiment(cfg, make_task: Callable[[Any, RunContext], Task], run_dir: str | os.PathLike | None = None) -> dict:
    """Run (or resume, or skip) one experiment run; return its summary.

    ``cfg`` is the composed config (an ``ExperimentConfig`` schema);
    ``make_task(cfg, ctx)`` builds the task after seeding. ``run_dir``
    defaults to Hydra's output directory for this job.
    """
    return Runner(cfg, make_task, run_dir).run()

"""The one training loop every experiment shares.

An experiment supplies a :class:`Task` (its model, optimizer, data and what
one training unit does); :func:`run_experiment` owns everything around it: the
run directory, config and meta files, seeding, the step loop, metric records
and the W&B mirror, evaluation and checkpoint cadence from the budget,
resume, console progress, the summary and the ``done`` marker.

A training *unit* is one call of ``Task.train_step``: an iteration for the
CNF, latent-ODE and demo experiments, an epoch for MNIST. The budget says how
many units a run has and how often to log, evaluate, checkpoint and print.

Faults it handles (docs/harness.md, "When things go wrong"): one process per
run directory (a ``flock``), another run's config, meta.json or checkpoint
refused and a corrupt one refused before anything in the directory is written,
the previous checkpoint kept and used when the newest cannot be read,
SIGTERM/SIGINT/SIGUSR2 finish the unit, checkpoint and stop (outside the unit
loop: stop at once, recorded as interrupted), non-finite metrics stop the run
(or skip the unit, ``nonfinite_skips``), failures and interruptions are
recorded in ``meta.json``, and a run refused before its first record leaves no
directory.

Under ``torchrun`` (tasks with ``supports_ddp``) the same loop runs on every
rank: rank 0 claims, writes and checkpoints, the others follow its decisions
(``ndode/harness/ddp.py``; docs/harness.md, "Scaling out").
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import ddp
from .config import NAME_EXCLUDED_KEYS, ConfigError, requested_budget, to_plain, validate
from .record import (
    CONFIG,
    META,
    METRICS,
    RunError,
    RunLockedError,
    RunRecord,
    RunRecordError,
    flatten,
    now_iso,
    scan_jsonl,
)
from .wandb_mirror import WandbMirror

__all__ = ["Task", "RunContext", "Runner", "run_experiment", "seed_everything", "resolve_device", "hydra_run_dir",
           "NonFiniteError", "RunInterrupted", "CheckpointError"]

log = logging.getLogger("ndode.harness")
CHECKPOINT_VERSION = 1
PROGRESS_SECONDS = 30.0  # a console line at least this often, whatever the budget's progress_every
# checkpoint and stop on these (SIGUSR2: SLURM's warning before a time limit or preemption, as submitit asks for it)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


@dataclass
class RunContext:
    """What the harness hands a task when it is built.

    ``dist`` is the process's place in the job (rank and world size; one
    process: rank 0 of 1), the only copy of it: a data-parallel task shards
    its data and sums its evaluation through it. It has no default, so a task
    can never be built believing it is alone inside a multi-process run.
    """

    run_dir: Path
    device: torch.device
    seed: int
    dist: ddp.DistEnv

    def __post_init__(self):
        if not isinstance(self.dist, ddp.DistEnv):
            raise TypeError(f"RunContext.dist must be the run's ddp.DistEnv (ndode.harness.ddp.env()), "
                            f"got {self.dist!r}")
        ddp.check_group(self.dist)

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0


class Task:
    """What an experiment gives the harness; subclass it.

    Set ``self.model`` (an ``nn.Module``) and, for training, ``self.optimizer``;
    ``self.scheduler`` (optional) is stepped by the harness once per unit.
    ``goals`` maps evaluation metrics to ``"min"`` or ``"max"``: their best
    value so far is kept in the summary (``best_<metric>``) and in W&B.

    ``supports_ddp``: the task trains data-parallel under ``torchrun``. It then
    calls :attr:`train_model` (the model wrapped in DDP) in ``train_step`` on
    its shard of each global batch (``ddp.shard(indices, ctx.dist)``), and
    reduces its evaluation over the ranks (``ddp.all_sum(ctx.dist, ...)``); the
    harness averages the training metrics and, during ``train_step``, gives the
    ``ODEBlock`` layers of ``model`` the error norm over all ranks' data
    (``ddp.synced_error_norms``). Without it a run under ``torchrun`` with more
    than one process stops at once.
    """

    supports_ddp: bool = False

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    goals: dict[str, str] = {}
    # evaluate() runs in eval mode and, unless this is False, under torch.no_grad()
    # (a CNF needs autograd inside its dynamics to evaluate log-densities)
    eval_no_grad: bool = True

    @property
    def train_model(self) -> torch.nn.Module:
        """What ``train_step`` calls: ``model``, or in a data-parallel run its DDP wrapper (gradients all-reduced)."""
        wrapped = self.__dict__.get("_ddp_model")
        return self.model if wrapped is None else wrapped

    def train_step(self, step: int) -> dict[str, float]:
        """Run training unit ``step`` (0-based); return its metrics (numbers; None is skipped; NaN or inf stops the run)."""
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


def _hydra():
    """This job's Hydra config (``hydra.*``), or None outside ``@hydra.main``."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:
        return None
    return HydraConfig.get() if HydraConfig.initialized() else None


def hydra_run_dir() -> Path | None:
    """The output directory Hydra chose for this job, or None outside ``@hydra.main``."""
    h = _hydra()
    return None if h is None else Path(h.runtime.output_dir)


def _hydra_multirun() -> bool:
    h = _hydra()
    return h is not None and h.mode is not None and h.mode.name == "MULTIRUN"


def _hydra_overrides() -> list[str] | None:
    h = _hydra()
    return None if h is None else list(h.overrides.task)


def _remove_unused_hydra_dir(path: Path) -> None:
    """Remove the directory Hydra made for a job that failed validation (empty: Hydra writes no files into it,
    configs/harness.yaml)."""
    try:
        path.rmdir()
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
    """The config keys that decide what a run computes, seed and budget included (for comparing a reused run
    directory)."""
    flat = flatten(config)
    return {k: v for k, v in flat.items() if not any(k == x or k.startswith(x + ".") for x in NAME_EXCLUDED_KEYS
                                                      if x not in ("seed", "budget"))}


def _fingerprint(identity: dict) -> str:
    """A short hash of a run's identity, kept in meta.json to tell its run from another."""
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _differs(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    shown = ", ".join(f"{k}: {a.get(k, '<absent>')!r} there, {b.get(k, '<absent>')!r} here" for k in keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


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



class NonFiniteError(RunError):
    """A training or goal metric became NaN or infinite."""


class RunInterrupted(RunError):
    """SIGTERM or SIGINT: the run checkpointed and stopped; the same command resumes it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class CheckpointError(RunRecordError):
    """No checkpoint of an unfinished run can be read."""


class _Stopped(BaseException):
    """A stop signal outside the unit loop (setup, resume, analyze, finish): nothing to finish, so stop at once.

    A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on its way (a checkpoint that
    fails to load, the W&B mirror) takes it for an error of its own.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _nonfinite(metrics: dict) -> dict:
    """The numeric entries of ``metrics`` that are NaN or infinite."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
            out[k] = v
    return out


def _nfe_text(*sources: dict) -> str:
    """The NFE figures of the first source that reports any (``nfe_forward 26, nfe_backward 40``)."""
    for src in sources:
        nfe = {k: v for k, v in (src or {}).items() if "nfe" in k and v is not None}
        if nfe:
            return ", ".join(f"{k} {_fmt(v)}" for k, v in nfe.items())
    return "not reported by this task"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


class Runner:
    """One run of one experiment, in named phases.

    ``setup`` (validate the config, lock and claim the run directory, build
    the task), ``resume`` (from the newest readable checkpoint, if any),
    ``train`` (the unit loop, with ``evaluate``, ``checkpoint`` and
    ``progress`` on the budget's cadence, the non-finite guard and graceful
    SIGTERM/SIGINT), ``analyze`` (the task's post-training work) and ``finish``
    (summary, figures, meta, ``done``). :meth:`run` calls them in that order;
    a failure is recorded (``fail``) and a run refused before its first record
    leaves no directory behind (``abandon``).
    """

    def __init__(self, cfg, make_task: Callable[[Any, RunContext], Task], run_dir: str | os.PathLike | None = None):
        self.cfg, self.make_task, self.run_dir = cfg, make_task, run_dir
        self.start = 0
        self.step = 0  # the unit whose metrics are being recorded
        # what a checkpoint carries besides the task's state
        self.hstate = {"means": None, "elapsed": 0.0, "last_eval": {}, "last_eval_step": 0, "last_train": {},
                       "best": {}, "skipped": 0}
        self.analysis: dict = {}
        self.cli = False  # under @hydra.main: errors become a message and an exit status
        self.record: RunRecord | None = None
        self.fresh = False  # the run directory held no earlier attempt when this process claimed it
        self.created: list[Path] = []  # directories this process made for the run
        self.stop_signal: int | None = None
        self.old_handlers: dict = {}
        self.phase = "setup"  # for messages: where a stop signal found the run
        self.in_units = False  # in the unit loop a stop signal finishes the unit; elsewhere it stops at once
        self.deferring = False  # writing the final records: a stop signal waits until they are written
        self.meta_started = False  # this attempt is in meta.json
        self.log_file: logging.Handler | None = None
        self.interrupted = False
        self.checkpoint_step: int | None = None  # the unit of the last checkpoint written or loaded
        self.metrics_steps: list[int] = []  # the steps of the records in metrics.jsonl when the run was claimed
        self.metrics_step = 0  # the step of the last record in metrics.jsonl (kept in each checkpoint)
        self.attempt: dict = {}  # details of this attempt for meta.json (checkpoint fallback)
        self.denv = ddp.env()  # RANK, WORLD_SIZE, LOCAL_RANK (torchrun); world 1 otherwise

    # ---- phases
    def run(self) -> dict:
        """Run (or resume, or skip) the run; return its summary.

        On the command line a :class:`RunError` or :class:`ConfigError` is
        printed as a message (no traceback) and exits non-zero (128 + the
        signal number after SIGTERM/SIGINT).
        """
        try:
            return self._run()
        except RunLockedError as e:
            if self.cli and _hydra_multirun():  # a resubmitted sweep: the other jobs still run
                log.warning("skip: %s", e)
                return {}
            if not self.cli:
                raise
            raise SystemExit(f"error: {e}") from None
        except (RunError, ConfigError) as e:
            if not self.cli:
                raise
            if isinstance(e, RunInterrupted):
                print(f"interrupted: {e}", file=sys.stderr, flush=True)
                raise SystemExit(128 + e.signum) from None
            raise SystemExit(f"{'config error' if isinstance(e, ConfigError) else 'error'}: {e}") from None
        finally:
            if self.log_file is not None:  # the next job of a sweep in this process logs to its own directory
                logging.getLogger().removeHandler(self.log_file)
                self.log_file.close()
            ddp.shutdown(self.denv)

    def _run(self) -> dict:
        old_handlers = self.catch_signals()  # from the start: a signal during setup is recorded too
        try:
            try:
                try:
                    if not self.setup():
                        return self.record.read_summary() or {}
                    self.resume()
                except BaseException as e:
                    if not self.abandon() and self.meta_started:
                        self.fail(e)
                    raise
                summary = self.train_to_end()
            finally:
                if self.record is not None:
                    self.record.unlock()
        except _Stopped as e:
            raise self.stopped(e.signum) from None
        finally:
            self.restore_signals(old_handlers)
        log.info("done: %s | %s | %s", self.record.dir,
                 " ".join(f"{k} {_fmt(v)}" for k, v in summary.items() if isinstance(v, (int, float))),
                 _fmt_time(summary["wall_time_s"]))
        return summary

    def train_to_end(self) -> dict:
        """``train``, ``analyze``, ``finish``, then ``commit``; a failure is recorded in meta.json."""
        exit_code = 1
        try:
            try:
                self.train()
                self.analyze()
                summary = self.finish()
                exit_code = 0
            finally:
                self.mirror.finish(exit_code)  # inside: a signal while W&B finishes leaves the run interrupted
                self.record.close()
            self.commit()
        except BaseException as e:
            if not self.interrupted:  # interrupt() recorded its own
                self.fail(e)
            raise
        return summary

    def enter(self, phase: str) -> None:
        """Start a phase; a stop signal that came between phases stops the run here."""
        self.phase = phase
        if self.stop_signal is not None and not self.interrupted:
            raise _Stopped(self.stop_signal)

    def setup(self) -> bool:
        """Validate, lock and claim the run directory, build the task; False when the run is already finished."""
        cfg = self.cfg
        hydra_dir = hydra_run_dir() if self.run_dir is None else None
        self.cli = hydra_dir is not None
        if self.rank != 0:
            log.setLevel(logging.WARNING)  # rank 0 speaks for the run
        try:
            validate(cfg)  # ranges, consistency, `+key` additions; names and types were checked when Hydra composed cfg
            self.check_world()
        except ConfigError:
            if hydra_dir is not None:
                if self.denv.active:  # every rank has this error; once all have joined, Hydra made all its files
                    ddp.init(self.denv, torch.device("cpu"))
                if self.rank == 0:
                    _remove_unused_hydra_dir(hydra_dir)
            raise
        self.device = ddp.device_for(resolve_device(cfg.device), self.denv)
        ddp.init(self.denv, self.device)
        self.budget_requested = requested_budget(cfg)
        self.config = to_plain(cfg)
        self.identity = _identity(self.config)
        run_dir = self.run_dir if self.run_dir is not None else hydra_dir
        if run_dir is None:
            raise RunRecordError("no run_dir given and not running under @hydra.main; pass run_dir=...")
        record = RunRecord(run_dir, writer=self.rank == 0)
        self.name, self.budget = record.dir.name, cfg.budget
        self.record = record
        if not self.agree(self.claim_checked):  # rank 0 claims; the others follow its outcome
            return False
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        ctx = RunContext(run_dir=record.dir, device=self.device, seed=cfg.seed, dist=self.denv)
        self.task = self.make_task(cfg, ctx)
        if self.denv.active:  # gradients are all-reduced by DDP's hooks (direct backprop and the adjoint's alike)
            from torch.nn.parallel import DistributedDataParallel

            self.task._ddp_model = DistributedDataParallel(
                self.task.model, device_ids=[self.device] if self.device.type == "cuda" else None)
            self.attempt.update(world_size=self.world, backend=torch.distributed.get_backend())
        return True

    def check_world(self) -> None:
        """Under ``torchrun`` with more than one process: the task must support it and the batch must split."""
        if not self.denv.active:
            return
        cfg = self.cfg
        if not getattr(self.make_task, "supports_ddp", False):
            raise ConfigError(f"experiment {cfg.experiment} runs single-process (its task does not support "
                              f"data-parallel training) but was started with WORLD_SIZE={self.world}; run it with "
                              "python, not torchrun (a sweep of such runs: hydra/launcher=slurm or joblib)")
        why = ddp.check_world(self.world, getattr(cfg.budget, "batch_size", None))
        if why:
            raise ConfigError(why)

    def agree(self, fn: Callable[[], bool]) -> bool:
        """``fn()`` on rank 0 alone, its result (or its error) on every rank."""
        if not self.denv.active:
            return fn()
        if self.rank == 0:
            try:
                out = fn()
            except BaseException as e:
                ddp.broadcast(self.denv, ("error", type(e).__name__, str(e)))
                raise
            return ddp.broadcast(self.denv, ("ok", out))[1]
        got = ddp.broadcast(self.denv, None)
        if got[0] == "ok":
            return got[1]
        cls = {"RunLockedError": RunLockedError, "ConfigError": ConfigError}.get(got[1], RunRecordError)
        raise cls(f"{got[2]} (rank 0: {got[1]})" if cls is RunRecordError else got[2])

    def claim_checked(self) -> bool:
        """Lock and claim the run directory and check that its config.yaml and meta.json are this run's and
        readable, and read its metrics; False: already finished.

        Nothing is written here: ``resume`` writes, once the checkpoints have been checked too, so a refused
        run leaves the directory as it found it.
        """
        record = self.record
        if record.done:
            log.info("skip: %s is finished (found its 'done' marker); delete the directory to run it again", record.dir)
            return False
        self.claim(record)
        if record.done:  # finished by the process that held the lock a moment ago
            log.info("skip: %s is finished (found its 'done' marker); delete the directory to run it again", record.dir)
            return False
        todo = (f"this run's directory is {record.dir}: delete it (rm -r '{record.dir}') to start this run there, "
                "or change the overrides/seed")
        old = record.read_config()  # a corrupt one: RunRecordError naming it
        if old is not None and _identity(old) != self.identity:
            raise RunRecordError(f"{record.path(CONFIG)} is another run's config (differs in "
                                 f"{_differs(_identity(old), self.identity)}); {todo}")
        theirs = record.read_meta().get("fingerprint")  # absent in records made before it existed: config.yaml decides
        if theirs is not None and theirs != _fingerprint(self.identity):
            raise RunRecordError(f"{record.path(META)} is another run's record (config fingerprint {theirs}, this "
                                 f"run's {_fingerprint(self.identity)}: another config or seed); {todo}")
        records, bad = scan_jsonl(record.path(METRICS))
        if bad:  # a torn last line is normal after a kill; a bad line before the end is not
            log.warning("resume: %s: line%s %s %s not a JSON record (left out of the record; noted in meta.json)",
                        record.path(METRICS), "s" if len(bad) > 1 else "", ", ".join(map(str, bad)),
                        "are" if len(bad) > 1 else "is")
            self.attempt["metrics_corrupt_lines"] = bad
        self.metrics_steps = [int(r.get("step") or 0) for _, _, r in records]
        return True

    def resume(self) -> None:
        """Load the newest readable checkpoint, if any; write the config, start the meta record and the W&B mirror.

        The first writes to the run directory happen here, after every file it holds has been read and checked.
        """
        self.enter("resume")
        cfg, record, budget = self.cfg, self.record, self.budget
        name = self.agree(lambda: getattr(self.load_checkpoint(), "name", None))  # rank 0 picks (and falls back)
        loaded = None if name is None else record.path(name)
        if loaded is not None and self.rank != 0:  # every rank loads rank 0's checkpoint
            self.restore(torch.load(loaded, map_location="cpu", weights_only=False))
        self.step = self.start
        self.rename_unreadable()
        self.config["device"] = str(self.device)  # the record says where it ran (device is not part of the name)
        record.write_config(self.config)
        self.metrics_step = max((s for s in self.metrics_steps if s <= self.start), default=0)
        if loaded is not None:
            dropped = record.truncate_metrics(self.start)
            log.info("resume: %s from %s at %s %d/%d (dropped %d later metric records) | %s, device %s, %s",
                     record.dir, loaded.name, budget.unit, self.start, budget.steps, dropped, self.budget_text(),
                     self.device_text(), self.processes_text())
        else:
            record.truncate_metrics(0)  # records of an attempt killed before its first checkpoint
            log.info("start: %s | %s, %d %ss, device %s, %s", record.dir, self.budget_text(), budget.steps,
                     budget.unit, self.device_text(), self.processes_text())
        record.start_meta(extra={"experiment": cfg.experiment, "run_name": self.name, "overrides": _hydra_overrides(),
                                 "fingerprint": _fingerprint(self.identity),
                                 "budget": {"requested": self.budget_requested, "resolved": budget.name},
                                 "device": {"requested": cfg.device, "resolved": str(self.device)}},
                          resumed_from=self.start if loaded is not None else None, attempt_extra=self.attempt)
        self.meta_started = True
        model_name = self.config["model"].get("name") if isinstance(self.config.get("model"), dict) else None
        self.mirror = WandbMirror(
            enabled=bool(cfg.logger.wandb) and self.rank == 0, mode=cfg.logger.mode, project=cfg.logger.project,
            entity=cfg.logger.entity, run_dir=record.dir, name=self.name, group=cfg.experiment,
            tags=[f"budget={budget.name}"] + ([f"model={model_name}"] if model_name else []),
            config={**self.config, "run_dir": str(record.dir)}, goals=self.task.goals,
            quiet=cfg.quiet or not cfg.logger.verbose)
        self.means = _Means(self.hstate["means"])
        self.t0, self.elapsed0 = time.perf_counter(), float(self.hstate["elapsed"])
        self.last_line = (self.t0, self.start)  # (time, unit) of the last console line: the ETA's pace

    def train(self) -> None:
        """Units ``start .. budget.steps``; log, evaluate, print and checkpoint on the budget's cadence.

        SIGTERM/SIGINT end the current unit, checkpoint and stop (:meth:`interrupt`).
        """
        self.enter("train")
        task, budget, hstate = self.task, self.budget, self.hstate
        task.model.train()
        progress_every = budget.progress_every or budget.eval_every or budget.steps
        self.in_units = True
        try:
            for step in range(self.start, budget.steps):
                self.step = s = step + 1
                snapshot = self.snapshot() if self.cfg.nonfinite_skips else None
                with ddp.synced_error_norms(self.denv, task.model):  # every rank's solver takes the same steps
                    metrics = task.train_step(step) or {}
                metrics = ddp.mean_metrics(self.denv, metrics, self.device)  # the global batch's (same on every rank)
                if task.scheduler is not None:
                    task.scheduler.step()
                self.guard(metrics, snapshot)
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
                stop = self.stop_signal
                if self.denv.active:  # a signal seen by any rank stops them all after this unit; one that comes
                    # after this all-reduce stays in stop_signal for the next (so the decision is the same everywhere)
                    stop = ddp.any_max(self.denv, stop or 0, self.device) or None
                if stop is not None:
                    self.stop_signal = stop
                    self.interrupt()
        finally:
            self.in_units = False

    def evaluate(self) -> None:
        """``Task.evaluate`` in eval mode; keeps the best value of each goal metric (a non-finite one stops the run)."""
        task, hstate = self.task, self.hstate
        task.model.eval()
        try:
            with torch.set_grad_enabled(not task.eval_no_grad):
                metrics = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in task.evaluate().items()}
        finally:
            task.model.train()
        bad = {k: v for k, v in _nonfinite(metrics).items() if k in task.goals}
        if bad:
            self.emit("eval", metrics)
            raise NonFiniteError(self.nonfinite_message("goal metric at the evaluation after", bad, metrics))
        for k, goal in task.goals.items():
            if metrics.get(k) is not None:
                prev = hstate["best"].get(k)
                better = prev is None or (metrics[k] < prev if goal == "min" else metrics[k] > prev)
                hstate["best"][k] = metrics[k] if better else prev
        hstate["last_eval"], hstate["last_eval_step"] = metrics, self.step
        self.emit("eval", metrics)

    def analyze(self) -> None:
        """``Task.analyze`` on the trained model: its own console lines and ``analysis`` record."""
        self.enter("analyze")
        if self.rank != 0:
            return
        log.log(self._level, "analyze: %s %s", self.cfg.experiment, self.name)
        t = time.perf_counter()
        self.analysis = dict(self.task.analyze(self.record.dir) or {})
        if self.analysis:
            self.emit("analysis", {**self.analysis, "analysis_time_s": round(time.perf_counter() - t, 3)})
        log.log(self._level, "analyze: done in %s", _fmt_time(time.perf_counter() - t))

    def finish(self) -> dict:
        """Summary, figures, the W&B summary and media; return the summary."""
        self.enter("finish")
        hstate, record = self.hstate, self.record
        summary = dict(self.task.summary(dict(hstate["last_eval"]), dict(hstate["last_train"])))
        summary.update(self.analysis)
        summary.update({f"best_{k}": v for k, v in hstate["best"].items()})
        if hstate.get("skipped"):
            summary["skipped_steps"] = hstate["skipped"]
        summary.update({"steps": self.budget.steps, "unit": self.budget.unit, "wall_time_s": round(self.elapsed(), 3)})
        record.write_summary(summary)
        if self.rank == 0:
            (record.dir / "figures").mkdir(exist_ok=True)
            self.task.make_figures(record.dir)
        self.mirror.summary(summary)
        self.mirror.media(record.dir, self.step)  # figures/*.png as images, arrays/* as tables
        return summary

    def commit(self) -> None:
        """meta.json's end time and ``done`` status, then the ``done`` marker.

        A stop signal waits until both are written, so meta.json never says ``done`` without the marker.
        """
        self.enter("commit")
        record, self.deferring = self.record, True
        try:
            if record.writer:
                meta = record.read_meta()
                meta["finished"] = now_iso()
                meta["status"], meta["reason"] = "done", None
                meta["attempts"][-1].update(finished=meta["finished"], status="done")
                record.write_meta(meta)
            record.mark_done()
        finally:
            self.deferring = False
        if self.stop_signal is not None:
            log.warning("%s came while %s was being marked done; the run is complete",
                        signal.Signals(self.stop_signal).name, record.dir)

    # ---- the run directory: one process at a time; nothing left behind by a refused run
    def claim(self, record: RunRecord) -> None:
        """Make the run directory and take its lock; note whether it holds an earlier attempt."""
        self.record = record
        missing = [p for p in (record.dir, *record.dir.parents) if not p.exists()]
        record.dir.mkdir(parents=True, exist_ok=True)
        self.created = missing
        record.lock()  # RunLockedError names the holder; nothing of its directory is touched
        self.fresh = record.writer and not any(
            record.path(n).exists() for n in ("meta.json", "metrics.jsonl", "checkpoint.pt", "checkpoint.prev.pt"))
        h = _hydra()
        if h is not None and record.writer:  # the job's log file, opened only now that this process holds the run
            # (configs/harness.yaml turns Hydra's own off: it would append to a running run's log before the lock)
            self.log_file = logging.FileHandler(record.path(f"{h.job.name}.log"), delay=True)
            self.log_file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
            logging.getLogger().addHandler(self.log_file)

    def abandon(self) -> bool:
        """A run refused before its first record: remove its directory (if this attempt was its first); True if so."""
        record = self.record
        if record is None or not self.fresh or record._lock_fd is None:
            return False
        record.close()
        record.unlock()
        shutil.rmtree(record.dir, ignore_errors=True)
        for d in self.created[1:]:  # the parents this process made, if nothing else went into them
            try:
                d.rmdir()
            except OSError:
                break
        log.debug("removed %s: the run stopped before its first record", record.dir)
        return True

    # ---- faults
    def snapshot(self) -> dict:
        """Model and optimizer state before a unit (only with ``nonfinite_skips``: a skipped unit is undone)."""
        task = self.task
        return copy.deepcopy({"model": task.model.state_dict(),
                              "optimizer": task.optimizer.state_dict() if task.optimizer is not None else None})

    def guard(self, metrics: dict, snapshot: dict | None) -> None:
        """Add a unit's metrics to the interval means, or skip the unit / stop the run if any is not finite."""
        bad = _nonfinite(metrics)
        if not bad:
            self.means.add(metrics)
            return
        allowed, skipped = int(self.cfg.nonfinite_skips), int(self.hstate.get("skipped", 0))
        if snapshot is None or skipped >= allowed:
            raise NonFiniteError(self.nonfinite_message("training metric at", bad, metrics))
        self.task.model.load_state_dict(snapshot["model"])
        if snapshot["optimizer"] is not None:
            self.task.optimizer.load_state_dict(snapshot["optimizer"])
        self.hstate["skipped"] = skipped + 1
        log.warning("%s %d/%d: %s not finite; unit skipped (model and optimizer restored), %d of %d allowed skips",
                    self.budget.unit, self.step, self.budget.steps,
                    ", ".join(f"{k}={v}" for k, v in bad.items()), skipped + 1, allowed)
        self.emit("skip", {"skipped": skipped + 1, "nonfinite": ",".join(bad)})

    def nonfinite_message(self, what: str, bad: dict, metrics: dict) -> str:
        b = self.budget
        if self.checkpoint_step is not None:
            ckpt = (f"its last good checkpoint ({b.unit} {self.checkpoint_step}) is kept in {self.record.dir}; "
                    "rerunning the command resumes from it (where the same values may come back)")
        else:
            ckpt = "no checkpoint was written before it"
        return (f"non-finite {what} {b.unit} {self.step}/{b.steps}: "
                f"{', '.join(f'{k}={v}' for k, v in bad.items())} (last NFE: "
                f"{_nfe_text(metrics, self.hstate['last_train'])}). The run stopped with status 'failed'; {ckpt}. "
                "Try a smaller learning rate or a tighter solver tolerance (a new run), or allow a few skipped "
                "units with nonfinite_skips=N")

    def fail(self, e: BaseException) -> None:
        """Record a failed (or, for an exit or a second Ctrl-C, interrupted) attempt in meta.json.

        Best effort: the failure may be a full disk.
        """
        if self.record is None or not self.record.writer:
            return
        if isinstance(e, _Stopped):  # a stop signal outside the unit loop
            name = signal.Signals(e.signum).name
            status, reason = "interrupted", f"{name} during {self.phase}"
            details = {"interrupted": {"signal": name, "phase": self.phase, "step": self.step, "at": now_iso()}}
        else:
            reason = str(e) if isinstance(e, RunError) else _first_line(e)
            status = "interrupted" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "failed"
            details = {"failed_at_step": self.step, "ended": now_iso()}
        try:
            self.record.set_status(status, reason=reason, **details)
        except Exception as write_error:  # noqa: BLE001 - the original error is what the user must see
            log.debug("could not record the failure in meta.json: %s", write_error)

    def catch_signals(self) -> dict:
        """SIGTERM, SIGINT and SIGUSR2, for the whole run: in the unit loop they set :attr:`stop_signal` (the loop
        then checkpoints and stops); in the other phases they stop the run at once (:class:`_Stopped`), recorded as
        ``interrupted``; while the final records are written they wait.

        SIGUSR2 is what SLURM sends ahead of a time limit or preemption with
        ``--signal=USR2@<s>`` (submitit's default): the handler that was there
        before (submitit's requeue) is called after the checkpoint. A second
        Ctrl-C stops at once.
        """
        self.old_handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self.old_handlers[sig] = signal.signal(sig, self.on_signal)
        return self.old_handlers

    def restore_signals(self, old: dict) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    def on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (the previous checkpoint is kept)
        self.stop_signal = signum
        if self.deferring:
            return
        if not self.in_units:  # no unit to finish: the last checkpoint (if any) is what a rerun resumes from
            raise _Stopped(signum)
        log.warning("%s: finishing %s %d, then checkpointing and stopping (Ctrl-C again stops at once)",
                    signal.Signals(signum).name, self.budget.unit, self.step)

    def interrupt(self) -> None:
        """Checkpoint (unless this unit just did), record the interruption, stop with :class:`RunInterrupted`.

        A handler installed before the run for this signal (other than Python's
        Ctrl-C handler) runs next: a launcher's requeue (submitit) happens after
        the checkpoint.
        """
        b, name = self.budget, signal.Signals(self.stop_signal).name
        if self.checkpoint_step != self.step:
            self.checkpoint()
        self.interrupted = True
        self.record.set_status("interrupted", reason=f"{name} at {b.unit} {self.step}/{b.steps}",
                               interrupted={"signal": name, "step": self.step, "at": now_iso()})
        self.hand_over(self.stop_signal)
        raise RunInterrupted(f"{name} at {b.unit} {self.step}/{b.steps} of {self.record.dir}: checkpoint written; "
                             "run the same command again to resume", self.stop_signal)

    def stopped(self, signum: int) -> RunInterrupted:
        """The error a stop signal outside the unit loop ends the run with (``fail`` recorded it)."""
        self.hand_over(signum)
        where = f" of {self.record.dir}" if self.record is not None else ""
        return RunInterrupted(f"{signal.Signals(signum).name} during {self.phase}{where}: stopped before it finished; "
                              "run the same command again to resume", signum)

    def hand_over(self, signum: int) -> None:
        """Call the handler installed before the run for this signal (a launcher's requeue), if any."""
        previous = self.old_handlers.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            log.info("%s: handing over to the handler installed before the run (%s)", signal.Signals(signum).name,
                     getattr(previous, "__qualname__", previous))
            previous(signum, None)

    # ---- helpers of the phases
    @property
    def rank(self) -> int:
        return self.denv.rank

    @property
    def world(self) -> int:
        return self.denv.world

    @property
    def _level(self) -> int:
        return logging.DEBUG if self.cfg.quiet else logging.INFO

    def budget_text(self) -> str:
        name = self.budget.name
        if self.budget_requested == "auto":
            return f"budget {name} (auto: {'CUDA available' if name == 'paper' else 'no CUDA'})"
        return f"budget {name}"

    def processes_text(self) -> str:
        if self.denv.active:
            return f"{self.world} processes (DDP, {torch.distributed.get_backend()})"
        if getattr(self.make_task, "supports_ddp", False):
            return "1 process"
        return "1 process (this experiment runs single-process; it does not support torchrun)"

    def device_text(self) -> str:
        return f"{self.device} (auto)" if self.cfg.device == "auto" else str(self.device)

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t0

    def emit(self, kind: str, metrics: dict) -> None:
        """One record at the current unit: metrics.jsonl and the W&B mirror."""
        self.record.append_metrics({"step": self.step, "kind": kind, "time_s": round(self.elapsed(), 3), **metrics})
        self.metrics_step = self.step
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
        """Write ``checkpoint.pt``; the one it replaces is kept as ``checkpoint.prev.pt``."""
        if self.rank != 0:
            return
        task, hstate = self.task, self.hstate
        hstate["means"], hstate["elapsed"] = self.means.state(), self.elapsed()
        state = {
            "version": CHECKPOINT_VERSION, "step": self.step, "saved": now_iso(),
            # whose it is and how far metrics.jsonl went when it was written (checked on resume)
            "identity": self.identity, "metrics_step": self.metrics_step,
            "model": task.model.state_dict(),
            "optimizer": task.optimizer.state_dict() if task.optimizer is not None else None,
            "scheduler": task.scheduler.state_dict() if task.scheduler is not None else None,
            "task": task.state_dict(), "rng": _rng_state(), "harness": hstate,
        }
        self.record.write_checkpoint(lambda tmp: torch.save(state, tmp))
        self.checkpoint_step = self.step

    def load_checkpoint(self) -> Path | None:
        """Restore the newest checkpoint that can be read; fall back on the previous one, say so; None: no checkpoint.

        A checkpoint of another run (another config or seed, or ahead of metrics.jsonl) is refused, not fallen
        back from: the directory holds files it should not, and the user must say which to keep.
        """
        errors = []
        candidates = self.record.checkpoints
        for i, path in enumerate(candidates):
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=False)
                if not isinstance(ckpt, dict) or "step" not in ckpt:
                    raise ValueError("not a checkpoint of this harness")
                self.check_checkpoint(path, ckpt)
                self.restore(ckpt)
            except RunRecordError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to read or apply it: try the previous one
                errors.append({"file": path.name, "error": _first_line(e)})
                log.warning("resume: cannot read %s (%s)%s", path, _first_line(e),
                            "; falling back to the previous checkpoint" if i + 1 < len(candidates) else "")
                continue
            if errors:
                log.warning("resume: fell back to %s (%s %d)", path.name, self.budget.unit, self.start)
                self.attempt.update(checkpoint_fallback=errors, resumed_from_file=path.name)
            return path
        if errors:
            raise CheckpointError(
                f"no checkpoint of {self.record.dir} can be read: "
                + "; ".join(f"{e['file']}: {e['error']}" for e in errors)
                + f". To start this run over, delete its directory (rm -r '{self.record.dir}') and run the same "
                "command again")
        return None

    def check_checkpoint(self, path: Path, ckpt: dict) -> None:
        """Refuse a checkpoint that is not this run's.

        Checkpoints written before ``identity`` and ``metrics_step`` were stored pass the first check (config.yaml
        was compared already) and must be within one logging interval of the last metrics record.
        """
        todo = (f"move it away (mv '{path}' /tmp/) to resume from the checkpoint before it or start over, or "
                f"delete the directory (rm -r '{self.record.dir}')")
        theirs = ckpt.get("identity")
        if theirs is not None and theirs != self.identity:
            raise RunRecordError(f"{path} is another run's checkpoint (differs in {_differs(theirs, self.identity)}); "
                                 f"{todo}")
        step, last = int(ckpt["step"]), max(self.metrics_steps, default=0)
        needed = ckpt["metrics_step"] if "metrics_step" in ckpt else step - self.budget.log_every
        if needed is not None and last < needed:
            raise RunRecordError(
                f"{path} is at {self.budget.unit} {step}, but {self.record.path(METRICS)} ends at {self.budget.unit} "
                f"{last}: the checkpoint is not this record's (copied from another run directory?); {todo}")

    def rename_unreadable(self) -> None:
        """Keep the checkpoints that could not be read as ``<name>.unreadable`` (for a look; never loaded again)."""
        for bad in self.attempt.get("checkpoint_fallback", []):
            unreadable = self.record.path(bad["file"])
            if self.record.writer and unreadable.exists():
                os.replace(unreadable, unreadable.with_name(unreadable.name + ".unreadable"))

    def restore(self, ckpt: dict) -> None:
        """Apply a loaded checkpoint to the task, the RNGs and the loop's state."""
        task = self.task
        task.model.load_state_dict(ckpt["model"])
        if task.optimizer is not None and ckpt.get("optimizer") is not None:
            task.optimizer.load_state_dict(ckpt["optimizer"])
        if task.scheduler is not None and ckpt.get("scheduler") is not None:
            task.scheduler.load_state_dict(ckpt["scheduler"])
        task.load_state_dict(ckpt.get("task") or {})
        _set_rng_state(ckpt["rng"])
        self.start, self.hstate = int(ckpt["step"]), {"skipped": 0, **ckpt["harness"]}
        self.checkpoint_step = self.start


def run_experiment(cfg, make_task: Callable[[Any, RunContext], Task], run_dir: str | os.PathLike | None = None) -> dict:
    """Run (or resume, or skip) one experiment run; return its summary.

    ``cfg`` is the composed config (an ``ExperimentConfig`` schema);
    ``make_task(cfg, ctx)`` builds the task after seeding. ``run_dir``
    defaults to Hydra's output directory for this job.
    """
    return Runner(cfg, make_task, run_dir).run()

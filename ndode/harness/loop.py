"""The one training loop every experiment shares: one run, in named phases.

An experiment supplies a :class:`~ndode.harness.task.Task` (its model,
optimizer, data and what one training unit does); :func:`run_experiment` owns
everything around it. :class:`Runner` is the run's phases and nothing else;
each concern around them is its own object:

* the run directory: lock, claim, abandon (:mod:`.rundir`), the run record's
  files (:mod:`.record`) and the W&B mirror (:mod:`ndode.wandb_mirror`);
* checkpoints: save, load, fall back (:mod:`.checkpointing`);
* stop signals: SIGTERM/SIGINT/SIGUSR2 finish the unit, checkpoint and stop (:mod:`.signals`);
* interval means, best goal values and the non-finite guard (:mod:`.metrics`);
* console lines (:mod:`.console`), the Hydra job (:mod:`.hydra_job`), agreement between ranks (:mod:`.ddp`).

A training *unit* is one call of ``Task.train_step``: an iteration for the
CNF, latent-ODE and demo experiments, an epoch for MNIST. The budget says how
many units a run has and how often to log, evaluate, checkpoint and print.
Faults and what the harness does about them: docs/harness.md, "When things go
wrong". Under ``torchrun`` (tasks with ``supports_ddp``) the same loop runs on
every rank: rank 0 claims, writes and checkpoints, the others follow its
decisions (docs/harness.md, "Scaling out").
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from typing import Any, Callable

import numpy as np
import torch

from ..wandb_mirror import WandbMirror
from . import ddp
from .checkpointing import CheckpointError, Checkpoints
from .config import ConfigError, requested_budget, to_plain, validate
from .console import Console
from .hydra_job import hydra_job, hydra_run_dir
from .metrics import LoopState, NonFiniteError, NonFiniteGuard
from .outcome import USER_ERRORS, exit_on_command_line, record_failure, record_interrupt, stopped_error
from .record import RunLockedError, RunRecord, RunRecordError
from .rundir import RunDirectory, run_identity
from .signals import AFTER_UNIT, DEFER, STOP_SIGNALS, RunInterrupted, StopNow, StopSignals
from .task import RunContext, Task

# CheckpointError, NonFiniteError, RunInterrupted, STOP_SIGNALS, hydra_run_dir, Task and RunContext live in the
# modules above; they are named here too for code that imports them from ndode.harness.loop
__all__ = ["Runner", "run_experiment", "seed_everything", "resolve_device", "Task", "RunContext", "hydra_run_dir",
           "NonFiniteError", "RunInterrupted", "CheckpointError", "STOP_SIGNALS"]

log = logging.getLogger("ndode.harness")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


class Runner:
    """One run of one experiment, in named phases: ``setup``, ``resume``, ``train`` (``evaluate`` and
    ``checkpoint`` on the budget's cadence), ``analyze``, ``finish``, ``commit``; :meth:`run` calls them in that
    order. A failure is recorded (``fail``), a run refused before its first record leaves no directory behind,
    and a stop signal ends the run resumable (``interrupt``, ``stopped``). Everything else is delegated: the run
    directory (:class:`RunDirectory`), checkpoints (:class:`Checkpoints`), signals (:class:`StopSignals`), the
    console (:class:`Console`), the non-finite guard (:class:`NonFiniteGuard`), the W&B mirror.
    """

    def __init__(self, cfg, make_task: Callable[[Any, RunContext], Task], run_dir: str | os.PathLike | None = None):
        self.cfg, self.make_task, self.budget = cfg, make_task, cfg.budget
        self.job = hydra_job()  # None outside @hydra.main
        self.cli = run_dir is None and self.job is not None  # errors become a message and an exit status
        self.run_dir = run_dir if run_dir is not None or self.job is None else self.job.run_dir
        self.denv = ddp.env()  # RANK, WORLD_SIZE, LOCAL_RANK (torchrun); world 1 otherwise
        self.rank = self.denv.rank
        self.signals = StopSignals(where=lambda: f"{self.budget.unit} {self.step}")
        self.console = Console(cfg, self.denv.world, speaks=self.rank == 0,
                               supports_ddp=getattr(make_task, "supports_ddp", False))
        self.phase = "setup"  # for messages: where a stop signal found the run
        # the unit resumed from, the unit whose metrics are being recorded, the last one in metrics.jsonl
        self.start = self.step = self.metrics_step = 0
        self.state = LoopState()  # what a checkpoint carries besides the task's state
        self.attempt: dict = {}  # details of this attempt for meta.json
        self.meta_started = self.interrupted = False  # this attempt is in meta.json; interrupt() recorded its end
        # built by setup and resume
        self.device, self.budget_requested, self.name = torch.device("cpu"), "auto", ""
        self.config: dict = {}
        self.identity: dict = {}
        self.record: RunRecord | None = None
        self.rundir: RunDirectory | None = None
        self.checkpoints: Checkpoints | None = None
        self.guard: NonFiniteGuard | None = None
        self.task: Task | None = None
        self.mirror: WandbMirror | None = None

    def run(self) -> dict:
        """Run (or resume, or skip) the run; return its summary. On the command line a run error is a message
        and an exit status (:func:`~.outcome.exit_on_command_line`)."""
        try:
            return self._run()
        except USER_ERRORS as e:
            if not self.cli:
                raise
            return exit_on_command_line(e, self.job.multirun)
        finally:
            if self.rundir is not None:
                self.rundir.close_log()
            ddp.shutdown(self.denv)

    def _run(self) -> dict:
        with self.signals:  # from the start: a signal during setup is recorded too
            try:
                try:
                    if not self.prepare():
                        return self.record.read_summary() or {}
                    summary = self.train_to_end()
                finally:
                    if self.record is not None:
                        self.record.unlock()
            except StopNow as e:
                raise self.stopped(e.signum) from None
        self.console.done(self.record.dir, summary)
        return summary

    def prepare(self) -> bool:
        """``setup`` and ``resume``; False when the run is already finished. A run refused here before its
        first record leaves no directory; a later failure is recorded in meta.json."""
        try:
            if not self.setup():
                return False
            self.resume()
            return True
        except BaseException as e:
            if not (self.rundir is not None and self.rundir.abandon()) and self.meta_started:
                self.fail(e)
            raise

    def train_to_end(self) -> dict:
        """``train``, ``analyze``, ``finish``, then ``commit``; a failure is recorded in meta.json."""
        exit_code = 1
        try:
            try:
                self.train()
                summary = self.finish(self.analyze())
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
        self.signals.check()

    def setup(self) -> bool:
        """Validate, claim the run directory, build the task; False when the run is already finished."""
        cfg = self.cfg
        try:
            validate(cfg)  # ranges, consistency, `+key` additions; names and types were checked when Hydra composed cfg
            why = ddp.world_problem(self.denv, getattr(self.make_task, "supports_ddp", False), cfg.experiment,
                                    getattr(cfg.budget, "batch_size", None))
            if why:
                raise ConfigError(why)
        except ConfigError:
            if self.cli:
                if self.denv.active:  # every rank has this error; once all have joined, Hydra made all its files
                    ddp.init(self.denv, torch.device("cpu"))
                if self.rank == 0:
                    self.job.remove_unused_dir()
            raise
        self.device = ddp.device_for(resolve_device(cfg.device), self.denv)
        ddp.init(self.denv, self.device)
        self.budget_requested, self.config = requested_budget(cfg), to_plain(cfg)
        self.identity = run_identity(self.config)
        if self.run_dir is None:
            raise RunRecordError("no run_dir given and not running under @hydra.main; pass run_dir=...")
        self.record = record = RunRecord(self.run_dir, writer=self.rank == 0)
        self.name = record.dir.name
        self.rundir = RunDirectory(record, self.identity, self.job)
        self.checkpoints = Checkpoints(record, self.identity, self.budget)
        self.guard = NonFiniteGuard(cfg.nonfinite_skips, self.budget, record.dir)
        if not self.agree(self.rundir.claim):  # rank 0 claims; the others follow its outcome
            return False
        if self.rundir.corrupt_lines:
            self.attempt["metrics_corrupt_lines"] = self.rundir.corrupt_lines
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        self.task = self.make_task(cfg, RunContext(run_dir=record.dir, device=self.device, seed=cfg.seed,
                                                   dist=self.denv))
        if self.denv.active:  # gradients are all-reduced by DDP's hooks (direct backprop and the adjoint's alike)
            self.task.ddp_model = ddp.wrap(self.task.model, self.device)
            self.attempt.update(world_size=self.denv.world, backend=torch.distributed.get_backend())
        return True

    def agree(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0 alone, its result (or its error) on every rank."""
        return ddp.agree(self.denv, fn, errors=(RunLockedError, ConfigError), default=RunRecordError)

    def resume(self) -> None:
        """Load the newest readable checkpoint, if any; then the first writes to the run directory (config, meta),
        after every file it holds has been read and checked; start the W&B mirror."""
        self.enter("resume")
        cfg, record, budget = self.cfg, self.record, self.budget
        name, ckpt = self.checkpoints.resume(self.task, self.rundir.metrics_steps, self.agree)  # rank 0 picks
        if ckpt is not None:
            self.start, self.state = int(ckpt["step"]), LoopState(ckpt["harness"])
        if self.checkpoints.unreadable:
            self.attempt.update(checkpoint_fallback=self.checkpoints.unreadable, resumed_from_file=name)
        self.step = self.start
        self.checkpoints.rename_unreadable()
        self.config["device"] = str(self.device)  # the record says where it ran (device is not part of the name)
        self.metrics_step = max((s for s in self.rundir.metrics_steps if s <= self.start), default=0)
        dropped = self.rundir.begin(self.config, self.start if name is not None else None, self.attempt,
                                    cfg.experiment, {"requested": self.budget_requested, "resolved": budget.name},
                                    {"requested": cfg.device, "resolved": str(self.device)})
        self.console.started(record.dir, budget, self.budget_requested, self.device, self.start,
                             loaded=None if name is None else record.path(name), dropped=dropped)
        self.meta_started = True
        self.mirror = WandbMirror.of_run(cfg, self.config, record.dir, self.name, self.task.goals,
                                         enabled=self.rank == 0)
        self.console.pace_from(self.state.start_clock(), self.start)

    def train(self) -> None:
        """Units ``start .. budget.steps``; log, evaluate, print and checkpoint on the budget's cadence.

        A stop signal ends the current unit, then the run checkpoints and stops (:meth:`interrupt`).
        """
        self.enter("train")
        task, budget, state = self.task, self.budget, self.state
        task.model.train()
        progress_every = budget.progress_every or budget.eval_every or budget.steps
        with self.signals.handled(AFTER_UNIT):
            for step in range(self.start, budget.steps):
                self.step = s = step + 1
                snapshot = self.guard.snapshot(task)
                with ddp.synced_error_norms(self.denv, task.model):  # every rank's solver takes the same steps
                    metrics = task.train_step(step) or {}
                metrics = ddp.mean_metrics(self.denv, metrics, self.device)  # the global batch's (same on every rank)
                if task.scheduler is not None:
                    task.scheduler.step()
                skip = self.guard.check(task, s, metrics, snapshot, state, self.checkpoints.last_step)
                if skip is not None:
                    self.emit("skip", skip)
                last = s == budget.steps
                if s % budget.log_every == 0 or last:
                    self.emit("train", state.end_interval())
                if (budget.eval_every and s % budget.eval_every == 0) or last:
                    self.evaluate()
                if self.console.progress_due(s, progress_every, last):
                    self.console.progress(self.name, budget, s, state)
                if (budget.checkpoint_every and s % budget.checkpoint_every == 0) or last:
                    self.checkpoint()
                # a signal seen by any rank stops them all after this unit; one that comes after this all-reduce
                # stays in `received` for the next (so the decision is the same everywhere)
                stop = ddp.any_signal(self.denv, self.signals.received, self.device)
                if stop is not None:
                    self.interrupt(stop)

    def evaluate(self) -> None:
        """``Task.evaluate`` in eval mode; keeps the best value of each goal metric (a non-finite one stops the run)."""
        task = self.task
        task.model.eval()
        try:
            with torch.set_grad_enabled(not task.eval_no_grad):
                metrics = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in task.evaluate().items()}
        finally:
            task.model.train()
        error = self.guard.check_goals(task.goals, self.step, metrics, self.checkpoints.last_step,
                                       self.state.last_train)
        if error is not None:
            self.emit("eval", metrics)
            raise error
        self.state.evaluated(self.step, metrics, task.goals)
        self.emit("eval", metrics)

    def analyze(self) -> dict:
        """``Task.analyze`` on the trained model (rank 0): its own console lines and ``analysis`` record; its
        metrics, which join the summary."""
        self.enter("analyze")
        if self.rank != 0:
            return {}
        self.console.analyzing(self.name)
        t = time.perf_counter()
        analysis = dict(self.task.analyze(self.record.dir) or {})
        if analysis:
            self.emit("analysis", {**analysis, "analysis_time_s": round(time.perf_counter() - t, 3)})
        self.console.analyzed(time.perf_counter() - t)
        return analysis

    def finish(self, analysis: dict) -> dict:
        """Summary, figures, the W&B summary and media; return the summary."""
        self.enter("finish")
        state, record = self.state, self.record
        summary = state.summary(self.task.summary(dict(state.last_eval), dict(state.last_train)), analysis, self.budget)
        record.write_summary(summary)
        if self.rank == 0:
            (record.dir / "figures").mkdir(exist_ok=True)
            self.task.make_figures(record.dir)
        self.mirror.summary(summary)
        self.mirror.media(record.dir, self.step)  # figures/*.png as images, arrays/* as tables
        return summary

    def commit(self) -> None:
        """meta.json's end time and ``done`` status, then the ``done`` marker; a stop signal waits until both are
        written, so meta.json never says ``done`` without the marker."""
        self.enter("commit")
        with self.signals.handled(DEFER):
            self.record.mark_done()
        if self.signals.received is not None:
            log.warning("%s came while %s was being marked done; the run is complete",
                        signal.Signals(self.signals.received).name, self.record.dir)

    def fail(self, e: BaseException) -> None:
        """Record a failed (or interrupted) attempt in meta.json."""
        record_failure(self.record, e, self.phase, self.step)

    def interrupt(self, signum: int) -> None:
        """Checkpoint (unless this unit just did), record the interruption, hand the signal over to the handler
        installed before the run (a launcher's requeue), stop with :class:`RunInterrupted`."""
        if self.checkpoints.last_step != self.step:
            self.checkpoint()
        self.interrupted = True
        error = record_interrupt(self.record, signum, self.budget, self.step)
        self.signals.hand_over(signum)
        raise error

    def stopped(self, signum: int) -> RunInterrupted:
        """The error a stop signal outside the unit loop ends the run with (``fail`` recorded it)."""
        self.signals.hand_over(signum)
        return stopped_error(signum, self.phase, self.record)

    def checkpoint(self) -> None:
        """Write ``checkpoint.pt`` (rank 0); the one it replaces is kept as ``checkpoint.prev.pt``."""
        self.checkpoints.save(self.step, self.task, self.state.state_dict(), self.metrics_step)

    def emit(self, kind: str, metrics: dict) -> None:
        """One record at the current unit: metrics.jsonl and the W&B mirror."""
        self.record.append_metrics({"step": self.step, "kind": kind, "time_s": round(self.state.elapsed(), 3),
                                    **metrics})
        self.metrics_step = self.step
        self.mirror.log(self.step, kind, metrics)


def run_experiment(cfg, make_task: Callable[[Any, RunContext], Task], run_dir: str | os.PathLike | None = None) -> dict:
    """Run (or resume, or skip) one experiment run; return its summary.

    ``cfg`` is the composed config (an ``ExperimentConfig`` schema);
    ``make_task(cfg, ctx)`` builds the task after seeding. ``run_dir``
    defaults to Hydra's output directory for this job.
    """
    return Runner(cfg, make_task, run_dir).run()

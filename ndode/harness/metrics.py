"""What the loop does with a task's numbers: the means over a logging interval, the best value of each goal
metric so far, and the non-finite guard (a NaN or infinite training or goal metric stops the run, or, with
``nonfinite_skips=N``, up to N units are undone and skipped, with a message that says where and what to try)."""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import torch

from .console import nfe_text
from .record import RunError

__all__ = ["NonFiniteError", "NonFiniteGuard", "IntervalMeans", "LoopState", "nonfinite", "update_best"]

log = logging.getLogger("ndode.harness")


class NonFiniteError(RunError):
    """A training or goal metric became NaN or infinite."""


def nonfinite(metrics: dict) -> dict:
    """The numeric entries of ``metrics`` that are NaN or infinite."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
            out[k] = v
    return out


class IntervalMeans:
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


class LoopState:
    """What a checkpoint carries besides the task's state (``saved``: its ``harness`` entry): the means of the
    current logging interval, the last interval's training metrics, the last evaluation and the best value of each
    goal metric, the units skipped, and the time spent (the clock runs from :meth:`start_clock`)."""

    def __init__(self, saved: dict | None = None):
        saved = saved or {}
        self.means = IntervalMeans(saved.get("means"))
        self.last_train: dict = saved.get("last_train", {})
        self.last_eval: dict = saved.get("last_eval", {})
        self.last_eval_step: int = saved.get("last_eval_step", 0)
        self.best: dict = saved.get("best", {})
        self.skipped = int(saved.get("skipped", 0))
        self.elapsed0 = float(saved.get("elapsed", 0.0))
        self.t0 = time.perf_counter()

    def start_clock(self) -> float:
        self.t0 = time.perf_counter()
        return self.t0

    def elapsed(self) -> float:
        """Seconds spent in the run, earlier attempts included."""
        return self.elapsed0 + time.perf_counter() - self.t0

    def end_interval(self) -> dict:
        """The means of the logging interval that ends here (the new ``last_train``)."""
        self.last_train = self.means.pop()
        return self.last_train

    def evaluated(self, step: int, metrics: dict, goals: dict[str, str]) -> None:
        update_best(self.best, goals, metrics)
        self.last_eval, self.last_eval_step = metrics, step

    def summary(self, task_summary: dict, analysis: dict, budget) -> dict:
        """summary.json: the task's summary, its analysis, the best goal values, skipped units, the run's length."""
        summary = {**task_summary, **analysis, **{f"best_{k}": v for k, v in self.best.items()}}
        if self.skipped:
            summary["skipped_steps"] = self.skipped
        summary.update({"steps": budget.steps, "unit": budget.unit, "wall_time_s": round(self.elapsed(), 3)})
        return summary

    def state_dict(self) -> dict:
        return {"means": self.means.state(), "elapsed": self.elapsed(), "last_eval": self.last_eval,
                "last_eval_step": self.last_eval_step, "last_train": self.last_train, "best": self.best,
                "skipped": self.skipped}


def update_best(best: dict, goals: dict[str, str], metrics: dict) -> None:
    """Keep in ``best`` the best value so far of each goal metric (``goals``: metric -> ``"min"`` or ``"max"``)."""
    for k, goal in goals.items():
        if metrics.get(k) is not None:
            prev = best.get(k)
            better = prev is None or (metrics[k] < prev if goal == "min" else metrics[k] > prev)
            best[k] = metrics[k] if better else prev


class NonFiniteGuard:
    """The guard of one run: ``allowed`` units may be skipped (``nonfinite_skips``); ``budget`` names the unit,
    ``run_dir`` where the last good checkpoint is."""

    def __init__(self, allowed: int, budget, run_dir: Path):
        self.allowed, self.budget, self.run_dir = int(allowed), budget, run_dir

    def snapshot(self, task) -> dict | None:
        """Model and optimizer state before a unit, when units may be skipped (a skipped unit is undone)."""
        if not self.allowed:
            return None
        return copy.deepcopy({"model": task.model.state_dict(),
                              "optimizer": task.optimizer.state_dict() if task.optimizer is not None else None})

    def check(self, task, step: int, metrics: dict, snapshot: dict | None, state: LoopState,
              checkpoint_step: int | None) -> dict | None:
        """After unit ``step``: add its metrics to the interval means, or, when one is not finite, undo the unit
        and return its ``skip`` record (model and optimizer back to ``snapshot``), or raise
        :class:`NonFiniteError` when no skip is left."""
        bad = nonfinite(metrics)
        if not bad:
            state.means.add(metrics)
            return None
        if snapshot is None or state.skipped >= self.allowed:
            raise self.error("training metric at", step, bad, metrics, checkpoint_step, state.last_train)
        task.model.load_state_dict(snapshot["model"])
        if snapshot["optimizer"] is not None:
            task.optimizer.load_state_dict(snapshot["optimizer"])
        state.skipped += 1
        log.warning("%s %d/%d: %s not finite; unit skipped (model and optimizer restored), %d of %d allowed skips",
                    self.budget.unit, step, self.budget.steps, ", ".join(f"{k}={v}" for k, v in bad.items()),
                    state.skipped, self.allowed)
        return {"skipped": state.skipped, "nonfinite": ",".join(bad)}

    def check_goals(self, goals: dict, step: int, metrics: dict, checkpoint_step: int | None,
                    last_train: dict) -> NonFiniteError | None:
        """The error for an evaluation whose goal metrics are not all finite (None: they are)."""
        bad = {k: v for k, v in nonfinite(metrics).items() if k in goals}
        return self.error("goal metric at the evaluation after", step, bad, metrics, checkpoint_step,
                          last_train) if bad else None

    def error(self, what: str, step: int, bad: dict, metrics: dict, checkpoint_step: int | None,
              last_train: dict) -> NonFiniteError:
        b = self.budget
        if checkpoint_step is not None:
            ckpt = (f"its last good checkpoint ({b.unit} {checkpoint_step}) is kept in {self.run_dir}; "
                    "rerunning the command resumes from it (where the same values may come back)")
        else:
            ckpt = "no checkpoint was written before it"
        return NonFiniteError(
            f"non-finite {what} {b.unit} {step}/{b.steps}: {', '.join(f'{k}={v}' for k, v in bad.items())} (last "
            f"NFE: {nfe_text(metrics, last_train)}). The run stopped with status 'failed'; {ckpt}. Try a smaller "
            "learning rate or a tighter solver tolerance (a new run), or allow a few skipped units with "
            "nonfinite_skips=N")

"""Checkpoints of one run: save, load the newest readable one, fall back on the one before it.

``checkpoint.pt`` holds the training state (model, optimizer, scheduler, the
task's own state, the global RNGs and the harness's loop state); writing a new
one keeps the one it replaces as ``checkpoint.prev.pt``, so a checkpoint that
cannot be read (a torn write, a full disk) costs one checkpoint interval, not
the run. A checkpoint of another run is refused, not fallen back from: the
directory holds files it should not, and the user must say which to keep.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from ..io import now_iso
from .console import first_line
from .record import METRICS, RunRecord, RunRecordError
from .rundir import differs

__all__ = ["Checkpoints", "CheckpointError", "CHECKPOINT_VERSION"]

log = logging.getLogger("ndode.harness")
CHECKPOINT_VERSION = 1


class CheckpointError(RunRecordError):
    """No checkpoint of an unfinished run can be read."""


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """The checkpoints of the run in ``record`` (``identity``: the run's config keys that decide what it
    computes; ``budget``: its unit and logging interval)."""

    def __init__(self, record: RunRecord, identity: dict, budget):
        self.record, self.identity, self.budget = record, identity, budget
        self.last_step: int | None = None  # the unit of the last checkpoint written or loaded
        self.unreadable: list[dict] = []  # {"file", "error"} of each checkpoint that could not be read

    def save(self, step: int, task, harness: dict, metrics_step: int) -> None:
        """Write ``checkpoint.pt`` (the writer, rank 0, only); ``harness`` is the loop's state,
        ``metrics_step`` the step of the last record in metrics.jsonl."""
        if not self.record.writer:
            return
        state = {
            "version": CHECKPOINT_VERSION, "step": step, "saved": now_iso(),
            # whose it is and how far metrics.jsonl went when it was written (checked on resume)
            "identity": self.identity, "metrics_step": metrics_step,
            "model": task.model.state_dict(),
            "optimizer": task.optimizer.state_dict() if task.optimizer is not None else None,
            "scheduler": task.scheduler.state_dict() if task.scheduler is not None else None,
            "task": task.state_dict(), "rng": rng_state(), "harness": harness,
        }
        self.record.write_checkpoint(lambda tmp: torch.save(state, tmp))
        self.last_step = step

    def load(self, task, metrics_steps: list[int]) -> tuple[Path, dict] | None:
        """Apply the newest checkpoint that can be read to ``task`` and the RNGs; fall back on the previous one,
        say so; return its path and contents, or None when there is no checkpoint.

        ``metrics_steps``: the steps of the records in metrics.jsonl (a checkpoint ahead of them is not this
        record's). :attr:`unreadable` lists the checkpoints that could not be read.
        """
        candidates = self.record.checkpoints
        for i, path in enumerate(candidates):
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=False)
                if not isinstance(ckpt, dict) or "step" not in ckpt:
                    raise ValueError("not a checkpoint of this harness")
                self.check(path, ckpt, metrics_steps)
                self.apply(task, ckpt)
            except RunRecordError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to read or apply it: try the previous one
                self.unreadable.append({"file": path.name, "error": first_line(e)})
                log.warning("resume: cannot read %s (%s)%s", path, first_line(e),
                            "; falling back to the previous checkpoint" if i + 1 < len(candidates) else "")
                continue
            if self.unreadable:
                log.warning("resume: fell back to %s (%s %d)", path.name, self.budget.unit, int(ckpt["step"]))
            return path, ckpt
        if self.unreadable:
            raise CheckpointError(
                f"no checkpoint of {self.record.dir} can be read: "
                + "; ".join(f"{e['file']}: {e['error']}" for e in self.unreadable)
                + f". To start this run over, delete its directory (rm -r '{self.record.dir}') and run the same "
                "command again")
        return None

    def resume(self, task, metrics_steps: list[int], agree) -> tuple[str | None, dict | None]:
        """The checkpoint a run resumes from, applied to ``task`` and the RNGs: rank 0 picks it (:meth:`load`,
        falling back), ``agree(fn)`` (``fn`` on rank 0, its result on every rank) hands its choice to the other
        ranks, which load the same file. Its file name and contents, or ``(None, None)``."""
        picked: list[dict] = []

        def pick() -> str | None:
            found = self.load(task, metrics_steps)
            if found is None:
                return None
            picked.append(found[1])
            return found[0].name

        name = agree(pick)
        if name is None:
            return None, None
        if not picked:  # another rank than rank 0
            ckpt = torch.load(self.record.path(name), map_location="cpu", weights_only=False)
            self.apply(task, ckpt)
            picked.append(ckpt)
        return name, picked[0]

    def check(self, path: Path, ckpt: dict, metrics_steps: list[int]) -> None:
        """Refuse a checkpoint that is not this run's.

        Checkpoints written before ``identity`` and ``metrics_step`` were stored pass the first check (config.yaml
        was compared already) and must be within one logging interval of the last metrics record.
        """
        todo = (f"move it away (mv '{path}' /tmp/) to resume from the checkpoint before it or start over, or "
                f"delete the directory (rm -r '{self.record.dir}')")
        theirs = ckpt.get("identity")
        if theirs is not None and theirs != self.identity:
            raise RunRecordError(f"{path} is another run's checkpoint (differs in {differs(theirs, self.identity)}); "
                                 f"{todo}")
        step, last, unit = int(ckpt["step"]), max(metrics_steps, default=0), self.budget.unit
        needed = ckpt["metrics_step"] if "metrics_step" in ckpt else step - self.budget.log_every
        if needed is not None and last < needed:
            raise RunRecordError(
                f"{path} is at {unit} {step}, but {self.record.path(METRICS)} ends at {unit} {last}: the "
                f"checkpoint is not this record's (copied from another run directory?); {todo}")

    def apply(self, task, ckpt: dict) -> None:
        """A loaded checkpoint's state into the task and the RNGs."""
        task.model.load_state_dict(ckpt["model"])
        if task.optimizer is not None and ckpt.get("optimizer") is not None:
            task.optimizer.load_state_dict(ckpt["optimizer"])
        if task.scheduler is not None and ckpt.get("scheduler") is not None:
            task.scheduler.load_state_dict(ckpt["scheduler"])
        task.load_state_dict(ckpt.get("task") or {})
        set_rng_state(ckpt["rng"])
        self.last_step = int(ckpt["step"])

    def rename_unreadable(self) -> None:
        """Keep the checkpoints that could not be read as ``<name>.unreadable`` (for a look; never loaded again)."""
        for bad in self.unreadable:
            path = self.record.path(bad["file"])
            if self.record.writer and path.exists():
                os.replace(path, path.with_name(path.name + ".unreadable"))

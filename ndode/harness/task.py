"""What an experiment gives the harness (:class:`Task`) and what the harness gives it back (:class:`RunContext`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import ddp

__all__ = ["Task", "RunContext"]


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

    # set by the harness in a data-parallel run: ``model`` in its DistributedDataParallel wrapper
    ddp_model: torch.nn.Module | None = None

    @property
    def train_model(self) -> torch.nn.Module:
        """What ``train_step`` calls: ``model``, or in a data-parallel run its DDP wrapper (gradients all-reduced)."""
        return self.model if self.ddp_model is None else self.ddp_model

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

"""The experiment harness: config schemas, run records, one training loop (split by concern: docs/harness.md,
"The harness's parts"), the collector.

An experiment is a :class:`Task` plus a schema; ``experiments/<name>.py`` is::

    @hydra.main(version_base="1.3", config_path="../configs", config_name="<name>")
    def main(cfg):
        return run_experiment(cfg, MyTask)      # MyTask(cfg, ctx) -> Task

and every table or figure starts from :func:`load_runs`.
"""

from ..io import atomic_save, atomic_write_text, read_jsonl
from .checkpointing import CheckpointError
from .config import (
    BudgetConfig,
    ConfigError,
    ExperimentConfig,
    LoggerConfig,
    Range,
    SolverConfig,
    SolverMethod,
    ranged,
    register_schema,
    run_name,
    solver_kwargs,
    to_plain,
    validate,
)
from .hydra_job import hydra_run_dir
from .loop import resolve_device, run_experiment, seed_everything
from .metrics import NonFiniteError
from .record import RecordWriteError, RunError, RunLockedError, RunRecord, RunRecordError
from .signals import RunInterrupted
from .task import RunContext, Task

__all__ = [
    "Task", "RunContext", "run_experiment", "load_runs", "load_records",
    "ExperimentConfig", "SolverConfig", "BudgetConfig", "LoggerConfig", "SolverMethod", "ConfigError",
    "Range", "ranged", "register_schema", "validate", "solver_kwargs", "to_plain", "run_name",
    "RunRecord", "RunRecordError", "RunError", "RunLockedError", "RecordWriteError", "CheckpointError",
    "NonFiniteError", "RunInterrupted", "atomic_save", "atomic_write_text", "read_jsonl",
    "seed_everything", "resolve_device", "hydra_run_dir",
]


def __getattr__(name):  # the collector pulls in pandas; training processes need not pay for it
    if name in ("load_runs", "load_records"):
        from . import collect

        return getattr(collect, name)
    raise AttributeError(f"module 'ndode.harness' has no attribute {name!r}")

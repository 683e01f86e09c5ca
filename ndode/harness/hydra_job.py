"""This process's Hydra job, read in one place: its output directory, name, overrides and mode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["HydraJob", "hydra_job", "hydra_run_dir"]


@dataclass(frozen=True)
class HydraJob:
    """What the harness needs of the job ``@hydra.main`` is running."""

    run_dir: Path  # the output directory Hydra chose (configs/harness.yaml: the run directory)
    name: str  # the job's name (its log file is <name>.log)
    overrides: list[str]  # the command line's overrides (recorded in meta.json)
    multirun: bool  # one job of a sweep (-m)

    def remove_unused_dir(self) -> None:
        """Remove the directory Hydra made for a job that failed validation (empty: Hydra writes no files
        into it, configs/harness.yaml)."""
        try:
            self.run_dir.rmdir()
        except OSError:
            pass


def hydra_job() -> HydraJob | None:
    """This job's Hydra state, or None outside ``@hydra.main`` (or without Hydra installed)."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:
        return None
    if not HydraConfig.initialized():
        return None
    h = HydraConfig.get()
    return HydraJob(run_dir=Path(h.runtime.output_dir), name=h.job.name, overrides=list(h.overrides.task),
                    multirun=h.mode is not None and h.mode.name == "MULTIRUN")


def hydra_run_dir() -> Path | None:
    """The output directory Hydra chose for this job, or None outside ``@hydra.main``."""
    job = hydra_job()
    return None if job is None else job.run_dir

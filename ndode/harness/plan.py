"""What a sweep is about to do, printed before it starts: its runs, their budget, and the wall time to expect.

A Hydra callback (``configs/harness.yaml``: ``hydra.callbacks.plan``) calls
:func:`print_plan` when a multirun starts (``python experiments/<exp>.py -m
...``, every ``make reproduce-*`` target). Each run's time comes from the
first source that has it, and the line says which:

1. ``measured``: the pace (seconds per unit) in run records on this machine,
   the run's own (a run to resume) or one with the same overrides and
   budget and another seed (``<run_root>/<experiment>/*/metrics.jsonl``);
2. ``README figures``: the committed measurements behind the README
   (``results/summary/<experiment>.csv``: ``wall_time_s`` over the steps of
   the same overrides at the same budget; never another budget's runs);

   both count only runs of the planned run's configuration (its ``config_id``,
   :func:`ndode.harness.collect.config_id`: everything but the seed and the
   options that cannot change a result): a record of the same name made
   before a budget file changed (another batch size, schedule or model)
   says nothing about this run's pace;

   a measured pace counts only on the same kind of device (CPU or CUDA) as the planned run;
3. none: the run is new and nothing comparable was measured.

Above :data:`LONG_S` on a CPU it says so plainly and names the cheaper
budget. It never blocks: the user may mean it.
"""

from __future__ import annotations

import csv
import heapq
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..io import read_jsonl

__all__ = ["PlannedRun", "expand_sweep", "plan_runs", "format_plan", "print_plan", "PlanCallback", "LONG_S"]

LONG_S = 2 * 3600.0  # above this on a CPU, the plan says so and names budget=cpu
_SEED = re.compile(r",seed=[^,]*$")


@dataclass
class PlannedRun:
    name: str
    run_dir: Path
    budget: str
    steps: int
    unit: str
    device: str
    seconds: float | None  # the estimate for this run (0 when it is finished and will be skipped)
    source: str  # where the estimate comes from
    state: str = "new"  # new | finished (skipped) | resumes
    config_id: str | None = None  # what a measurement must match to count (None: not compared)


def _key(name: str) -> str:
    """A run name without its seed: runs that differ only there run at the same pace."""
    return _SEED.sub("", name)


def _record_pace(run_dir: Path) -> tuple[float, int] | None:
    """(seconds per unit, last unit) from a run record's metric records."""
    recs = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("time_s") and r.get("step")]
    if not recs:
        return None
    last = recs[-1]
    return float(last["time_s"]) / int(last["step"]), int(last["step"])


def _same_device(recorded: str | None, planned: str) -> bool:
    """A pace measured on a CPU says nothing about a GPU: compare device types (unknown or ``auto``: assume so)."""
    if not recorded or recorded == "auto":
        return True
    return recorded.split(":")[0] == planned.split(":")[0]


def _same_config(recorded: str | None, planned: str | None) -> bool:
    """Both ids known: they must be equal; either unknown (an older summary without the column): assume so."""
    return not recorded or not planned or recorded == planned


def _record_config(run_dir: Path) -> dict:
    """A run record's config.yaml as a dict; {} when it is missing or unreadable (nothing to compare)."""
    try:
        import yaml

        return yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, ValueError):
        return {}


def _config_id(config) -> str | None:
    """The ``config_id`` of a resolved config (a composed one without its ``hydra`` node, or a record's
    config.yaml as a dict), as the collector computes it; None if it cannot be resolved."""
    try:
        from omegaconf import DictConfig, OmegaConf

        from ..io import flatten
        from .collect import config_id
        from .config import to_plain

        if isinstance(config, DictConfig):
            config = to_plain(OmegaConf.masked_copy(config, [k for k in config.keys() if k != "hydra"]))
        return config_id(flatten(config))
    except Exception:  # an unresolvable config: no id, so no comparison (the plan must never stop a sweep)
        return None


def _summary_rows(summary_csv: Path) -> list[dict]:
    if not summary_csv.is_file():
        return []
    with open(summary_csv, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The jobs of a Hydra sweep (``model=a,b seed=0,1`` → four override lists), as Hydra's basic sweeper makes them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
    return BasicSweeper.split_arguments(parsed, None)[0]


def plan_runs(experiment: str, jobs: list[list[str]], compose: Callable[[list[str]], Any],
              summary_dir: str | Path = "results/summary") -> list[PlannedRun]:
    """One :class:`PlannedRun` per job; ``compose(overrides)`` returns the job's config with its ``hydra`` node."""
    from .loop import resolve_device

    table = Path(summary_dir) / f"{experiment}.csv"
    rows = _summary_rows(table)
    out = []
    for job in jobs:
        cfg = compose(job)
        run_dir = Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
        b = cfg.budget
        run = PlannedRun(name=run_dir.name, run_dir=run_dir, budget=str(b.name), steps=int(b.steps), unit=str(b.unit),
                         device=str(resolve_device(cfg.device)), seconds=None, source="no measurement yet",
                         config_id=_config_id(cfg))
        _estimate(run, rows, table, job, compose)
        out.append(run)
    return out


def _estimate(run: PlannedRun, rows: list[dict], table: Path, job: list[str], compose) -> None:
    if (run.run_dir / "done").exists():
        run.seconds, run.state, run.source = 0.0, "finished", "finished: skipped"
        return
    own = _record_pace(run.run_dir) if run.run_dir.is_dir() else None
    if own:
        pace, last = own
        run.seconds, run.state = pace * (run.steps - last), "resumes"
        run.source = f"measured: its own record ({run.run_dir})"
        return
    siblings = run.run_dir.parent
    if siblings.is_dir():
        for other in sorted(siblings.iterdir()):
            if other == run.run_dir or _key(other.name) != _key(run.name):
                continue
            config = _record_config(other)  # read once: its device and its configuration must both match
            if (_same_device(config.get("device"), run.device)
                    and _same_config(_config_id(config) if config else None, run.config_id)):
                pace = _record_pace(other)
                if pace:
                    run.seconds, run.source = pace[0] * run.steps, f"measured: {other}"
                    return
    # only runs of the budget being planned: another budget's runs differ in more than their length (a smoke
    # run's units are on tiny data), so their pace says nothing about this one's
    rows = [r for r in rows if _same_device(r.get("device"), run.device) and r.get("budget.name") == run.budget]
    same = [r for r in rows if _key(Path(r.get("run") or r.get("run_name", "")).name) == _key(run.name)
            and _same_config(r.get("config_id"), run.config_id)]
    paces = []
    for r in same:
        try:
            wall = float(r["wall_time_s"])
            steps = r.get("steps") or r.get("budget.steps")
            if not steps:  # the committed table lacks the step count: the budget has it
                steps = compose([*[o for o in job if not o.startswith("budget=")], f"budget={r['budget.name']}"]).budget.steps
            paces.append(wall / float(steps))
        except (KeyError, ValueError, TypeError):
            continue
    if paces:
        run.seconds = sum(paces) / len(paces) * run.steps
        run.source = f"README figures: {table.as_posix()}, budget {run.budget}"


def _fmt_duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _makespan(seconds: list[float], jobs: int) -> float:
    """Wall time of running these one after another on ``jobs`` parallel workers (longest first)."""
    workers = [0.0] * max(1, jobs)
    for s in sorted(seconds, reverse=True):
        heapq.heapreplace(workers, workers[0] + s)
    return max(workers)


def _paper_on_cpu(runs: list[PlannedRun]) -> bool:
    return any(r.budget == "paper" and r.device == "cpu" for r in runs)


def format_plan(experiment: str, runs: list[PlannedRun], jobs: int, requested_budget: str,
                cheaper: float | None = None) -> str:
    """The lines printed before a sweep: header, one line per run, the estimate (naming its source), any warning."""
    budgets = sorted({r.budget for r in runs})
    devices = sorted({r.device for r in runs})
    auto = f" (auto: {'CUDA available' if budgets == ['paper'] else 'no CUDA'})" if requested_budget == "auto" else ""
    lines = [f"plan: {experiment}, {len(runs)} run(s) at budget {', '.join(budgets)}{auto} on {', '.join(devices)}, "
             f"{jobs} at a time"]
    width = max((len(r.name) for r in runs), default=0)
    for r in runs:
        t = f"~{_fmt_duration(r.seconds)}" if r.seconds is not None else "?"
        lines.append(f"  {r.name:<{width}}  {r.steps} {r.unit}s  {t:>8}  {r.source}")
    known = [r for r in runs if r.seconds is not None]
    sources = sorted({r.source.split(":")[0].split(" (")[0] for r in known if r.state != "finished"})
    total = _makespan([r.seconds for r in known], jobs) if known else None
    if not known:
        lines.append("estimate: unknown (no run record and no README figure for these runs at this budget yet)")
    else:
        partial = f" for {len(known)} of {len(runs)} runs" if len(known) < len(runs) else ""
        lines.append(f"estimate: ~{_fmt_duration(total)} wall{partial} "
                     f"(source: {', '.join(sources) if sources else 'finished runs are skipped'})")
    if _paper_on_cpu(runs) and (total is None or total > LONG_S):
        alt = f" (~{_fmt_duration(cheaper)})" if cheaper else ""
        size = f"about {_fmt_duration(total)}" if total is not None else f"{max(r.steps for r in runs)} {runs[0].unit}s a run"
        lines.append(f"WARNING: this is the paper's schedule on the CPU ({size}). The cpu budget gives real results "
                     f"in far less{alt}: BUDGET=cpu for make targets, budget=cpu on the command line. "
                     "Starting anyway (Ctrl-C stops it; the same command resumes).")
    return "\n".join(lines)


def print_plan(experiment: str, overrides: list[str], jobs: int, compose: Callable[[list[str]], Any],
               requested_budget: str) -> str:
    """Plan a sweep and print it (and the cheaper budget's estimate, when the plan is long on a CPU)."""
    runs = plan_runs(experiment, expand_sweep(overrides), compose)
    cheaper = None
    if _paper_on_cpu(runs):
        alt = [o for o in overrides if not o.startswith("budget=")] + ["budget=cpu"]
        cheap = plan_runs(experiment, expand_sweep(alt), compose)
        if all(r.seconds is not None for r in cheap):
            cheaper = _makespan([r.seconds for r in cheap], jobs)
    text = format_plan(experiment, runs, jobs, requested_budget, cheaper)
    print(text, flush=True)
    return text


try:
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover - hydra is an extra
    _Callback = object


class PlanCallback(_Callback):
    """Prints the plan of a multirun before its first job (never stops it: a failure to estimate is only a note)."""

    config_name: str = ""

    def job_config(self, job: list[str]):
        """A job's config with its ``hydra`` node (run directory, launcher), composed as the sweep will."""
        from hydra import compose

        return compose(config_name=self.config_name, overrides=list(job), return_hydra_config=True)

    def on_multirun_start(self, config, **kwargs) -> None:
        try:
            from .config import requested_budget

            overrides = list(config.hydra.overrides.task)
            launcher = config.hydra.launcher
            target = str(launcher.get("_target_", ""))
            jobs = int(launcher.get("n_jobs") or 1) if "submitit" not in target else len(expand_sweep(overrides))
            self.config_name = config.hydra.job.config_name
            first = self.job_config(expand_sweep(overrides)[0])
            print_plan(str(first.experiment), overrides, jobs, self.job_config, requested_budget(first))
        except Exception as e:  # noqa: BLE001 - the plan is advice; the sweep goes on
            print(f"plan: no estimate ({type(e).__name__}: {e})", flush=True)

"""The collector: every run record under a root as one pandas DataFrame.

This DataFrame is the single input of all tables and figures. One row per run:

* ``run`` (path relative to the root), ``run_dir`` (the root as given joined with ``run``: relative when the root is, so committed tables hold no machine paths), ``run_name``, ``status`` (``done``, or for an unfinished run ``failed``, ``interrupted`` or ``unfinished``, with the ``reason`` from ``meta.json``),
* the resolved config flattened with dots (``solver.method``, ``budget.name``, ``seed``, ...),
* the summary metrics (``summary.json``, flattened the same way),
* ``git_commit``, ``git_dirty``, ``started``, ``finished`` from ``meta.json``,
* ``config_id``: a short hash of the resolved config without the seed and without :data:`NON_RESULT_OPTIONS`
  (what a run computes, not where or how it was logged); two runs with the same ``config_id`` differ only in
  their seed, so a table may average them, and only them. ``config_json`` holds the same reduced config (the
  report names the options in which two configurations differ).

A summary key that collides with a config column is an error, not a silent overwrite.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pandas as pd

from ..io import flatten, read_jsonl
from .record import RunRecord, RunRecordError

__all__ = ["load_runs", "load_records", "RUN_COLUMNS", "NON_RESULT_OPTIONS", "result_config", "config_id"]

log = logging.getLogger("ndode.report")
RUN_COLUMNS = ("run", "run_dir", "run_name", "status")
# The one list of options that cannot change what a run computes: where its record goes, how often it logs,
# prints and checkpoints, the W&B mirror, and where and on how many threads it ran. Everything else in the
# resolved config (the budget's steps and learning rate, the data, the model, the solver) is part of a run's
# configuration, and tables never average runs whose configurations differ. An entry names an option or a
# whole group (``logger`` covers ``logger.mode``...).
NON_RESULT_OPTIONS = ("seed", "run_root", "quiet", "device", "threads", "logger", "budget.log_every",
                      "budget.progress_every", "budget.checkpoint_every")
META_COLUMNS = ("git_commit", "git_dirty", "started", "finished")
_SKIP_DIRS = {".hydra", "wandb", ".submitit", "figures", "arrays", "__pycache__"}


def result_config(flat: dict) -> dict:
    """A flattened resolved config without :data:`NON_RESULT_OPTIONS`: what decides a run's results, but its seed."""
    return {k: v for k, v in flat.items()
            if not any(k == x or k.startswith(x + ".") for x in NON_RESULT_OPTIONS)}


def config_id(flat: dict) -> str:
    """A short, stable hash of :func:`result_config` (runs with equal ids differ only in their seed)."""
    text = json.dumps(result_config(flat), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _run_dirs(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        if "config.yaml" in filenames and "meta.json" in filenames:
            dirnames[:] = []  # a run record holds no nested runs
            yield Path(dirpath)
        else:
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)


def load_runs(root: str | os.PathLike, finished_only: bool = True) -> pd.DataFrame:
    """Load every run record under ``root`` (recursively) into a DataFrame, sorted by ``run``.

    ``finished_only`` (default) keeps runs with a ``done`` marker; otherwise
    the others come too, with ``status`` ``failed`` (a non-finite metric, an
    error: ``reason`` says which), ``interrupted`` (SIGTERM/SIGINT; the same
    command resumes it) or ``unfinished`` (running, or killed), and whatever
    summary they have.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no run records: {root} is not a directory")
    rows = []
    for d in _run_dirs(root):
        done = (d / "done").exists()
        if finished_only and not done:
            continue
        record = RunRecord(d, writer=False)
        try:  # the record's own readers: a corrupt file is a RunRecordError naming it
            config, meta, summary = record.read_config(), record.read_meta(), record.read_summary() or {}
        except RunRecordError as e:  # one unreadable record must not hide every other run's
            log.warning("left out %s: %s", d, e)
            continue
        status = "done" if done else meta.get("status") if meta.get("status") in ("failed", "interrupted") else "unfinished"
        row = {"run": d.relative_to(root).as_posix(), "run_dir": d.as_posix(), "run_name": d.name, "status": status}
        if not done:
            row["reason"] = meta.get("reason")
        flat = flatten(config)
        row.update(flat)
        row["config_id"] = config_id(flat)
        row["config_json"] = json.dumps(result_config(flat), sort_keys=True, default=str)
        for k, v in flatten(summary).items():
            if k in row:
                raise ValueError(f"{d}: summary key {k!r} collides with a config or record column; rename it")
            row[k] = v
        git = meta.get("git") or {}
        row.update({"git_commit": git.get("commit"), "git_dirty": git.get("dirty"),
                    "started": meta.get("started"), "finished": meta.get("finished")})
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=list(RUN_COLUMNS))
    return pd.DataFrame(rows).sort_values("run", kind="stable").reset_index(drop=True)


def load_records(runs: pd.DataFrame, kind: str, columns: list[str], keys: tuple[str, ...] = ()) -> pd.DataFrame:
    """The ``kind`` records (``train`` or ``eval``) of every run in ``runs`` (a :func:`load_runs` frame) from its
    metrics.jsonl: one row per record with ``run``, ``step``, the run's ``keys`` columns and ``columns`` (None where
    a record lacks one). A run without a metrics.jsonl gives no rows. What the learning curves and the convergence
    checks read."""
    recs = []
    for _, r in runs.iterrows():
        path = Path(r["run_dir"]) / "metrics.jsonl"
        rows = [x for x in read_jsonl(path) if x.get("kind") == kind] if path.exists() else []
        ids = {"run": r["run"], **{k: r.get(k) for k in keys}}
        recs += [{**ids, "step": x["step"], **{c: x.get(c) for c in columns}} for x in rows]
    return pd.DataFrame(recs, columns=["run", *keys, "step", *columns])

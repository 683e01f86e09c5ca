"""Tables: mean ± standard deviation over seeds, from the collector's DataFrame.

The suite's one statistics convention, in every table: the mean and the sample standard deviation
(ddof=1; none for a single seed) over seeds, with the number of seeds (``n_seeds``) beside them.

Each experiment declares one :class:`TableSpec` in :data:`TABLES` (which
config columns identify a row, which summary metrics to report); the
functions here are pure, so the golden test can run them on a checked-in
sample of run records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

__all__ = ["TableSpec", "TABLES", "seed_table", "markdown_table", "runs_table"]


@dataclass(frozen=True)
class TableSpec:
    experiment: str
    by: tuple[str, ...]  # config columns identifying a row; budget.name first: a table says its budget
    metrics: tuple[str, ...]  # summary columns, reported as mean ± std over seeds
    labels: dict[str, str] = field(default_factory=dict)  # column -> header
    formats: dict[str, str] = field(default_factory=dict)  # metric -> format spec (default .4g)
    title: str = ""


TABLES: dict[str, TableSpec] = {
    "ode_demo": TableSpec(
        experiment="ode_demo",
        by=("budget.name", "solver.method", "solver.adjoint", "model.cubic_features"),
        metrics=("mse_heldout", "nfe_forward", "nfe_eval", "wall_time_s"),
        labels={"budget.name": "budget", "solver.method": "solver", "solver.adjoint": "adjoint",
                "model.cubic_features": "y³ features", "mse_heldout": "held-out MSE",
                "nfe_forward": "NFE per window batch", "nfe_eval": "NFE t∈[0,25]", "wall_time_s": "time (s)"},
        formats={"mse_heldout": ".3g", "nfe_forward": ".1f", "nfe_eval": ".0f", "wall_time_s": ".1f"},
        title="Spiral ODE demo: learned dynamics, mean ± std over seeds",
    ),
}


def _require(df: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{what}: columns {missing} are not in the runs DataFrame (has: {sorted(df.columns)})")


def seed_table(df: pd.DataFrame, by, metrics, seed_col: str = "seed") -> pd.DataFrame:
    """One row per distinct ``by``: ``n_seeds`` runs, and ``<metric>_mean`` / ``<metric>_std`` for each metric.

    The standard deviation is the sample one (ddof=1); it is NaN for a single run.
    """
    by, metrics = list(by), list(metrics)
    _require(df, by + metrics + [seed_col], "seed_table")
    rows = []
    for key, g in df.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row["n_seeds"] = int(g[seed_col].count())
        for m in metrics:
            x = pd.to_numeric(g[m], errors="coerce").dropna()
            row[f"{m}_mean"] = float(x.mean()) if len(x) else math.nan
            row[f"{m}_std"] = float(x.std(ddof=1)) if len(x) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=by + ["n_seeds"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])


def mean_std_cell(mean, std, fmt: str, unit: str = "") -> str:
    """A table cell in the suite's one convention: ``mean ± std`` (each with ``unit``), the mean alone when the std
    is missing (one seed, or a number without spread), ``–`` when the mean is missing (None or NaN)."""
    if mean is None or mean != mean:
        return "–"
    if std is None or std != std:
        return f"{format(mean, fmt)}{unit}"
    return f"{format(mean, fmt)}{unit} ± {format(std, fmt)}{unit}"


def markdown_table(agg: pd.DataFrame, spec: TableSpec) -> str:
    """A GitHub-Markdown table of a :func:`seed_table` result."""
    cols = list(spec.by) + ["n_seeds"] + list(spec.metrics)
    header = [spec.labels.get(c, c) for c in cols]
    lines = []
    if spec.title:
        lines += [f"**{spec.title}**", ""]
    lines += ["| " + " | ".join(header) + " |",
              "|" + "|".join(" --- " if c in spec.by else " ---: " for c in cols) + "|"]
    for _, r in agg.iterrows():
        cells = [str(r[c]) for c in spec.by] + [str(int(r["n_seeds"]))]
        cells += [mean_std_cell(r[f"{m}_mean"], r[f"{m}_std"], spec.formats.get(m, ".4g")) for m in spec.metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def runs_table(df: pd.DataFrame, spec: TableSpec, seed_col: str = "seed") -> pd.DataFrame:
    """The per-run rows a table is built from (for results/summary/<experiment>.csv)."""
    cols = ["run"] + list(spec.by) + [seed_col] + list(spec.metrics)
    _require(df, cols, "runs_table")
    return df[cols].sort_values(list(spec.by) + [seed_col], kind="stable").reset_index(drop=True)

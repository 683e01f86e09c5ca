"""Tables: mean ± standard deviation over seeds, from the collector's DataFrame.

The suite's one statistics convention, in every table: the mean and the sample standard deviation
(ddof=1; none for a single seed) over seeds, with the number of seeds (``n_seeds``) beside them, computed by
one function, :func:`mean_std` (every experiment's report module calls it, as DomainBed's ``Q.mean_std``), and
shown by one, :func:`mean_std_cell`.

Each experiment declares one :class:`TableSpec` in :data:`TABLES` (which
config columns identify a row, which summary metrics to report); the
functions here are pure, so the golden test can run them on a checked-in
sample of run records.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pandas as pd

__all__ = ["TableSpec", "TABLES", "CELLS", "mean_std", "seed_table", "markdown_table", "runs_table",
           "one_config_per_cell", "tabulable"]


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


# What makes one cell of each experiment's tables and figures (with the budget): every run in a cell must have
# one configuration (one_config_per_cell). The cells are the paper's axes: MNIST's model, the CNF's target, flow
# and size, the latent ODE's model and observation count, the Poisson term on or off; the demo's table rows.
CELLS: dict[str, tuple[str, ...]] = {
    "mnist": ("model.name", "solver.adjoint"),  # RK-Net is model.name=odenet with solver.adjoint=none
    "cnf": ("data", "flow", "size"),
    # an RNN's candidates (model.feed_prev: teacher forcing, scheduled sampling) are cells of their own; the report
    # chooses between them on validation (ndode.report.latent_ode.VARIANT_KEYS)
    "latent_ode": ("model.name", "model.feed_prev", "data.n_obs"),
    "latent_poisson": ("model.poisson",),
    # the gradient study: an accuracy run per (source model, tolerance); a training run per (experiment, method)
    "gradients": ("source", "tol", "data", "flow", "size", "model.name", "data.n_obs", "solver.adjoint"),
    **{name: tuple(c for c in spec.by if c != "budget.name") for name, spec in TABLES.items()},
}


def tabulable(df: pd.DataFrame, experiment: str) -> tuple[pd.DataFrame, list[str]]:
    """:func:`one_config_per_cell` over the experiment's :data:`CELLS` (and the budget)."""
    return one_config_per_cell(df, ("budget.name", *CELLS.get(experiment, ())))


def _differing(configs: list[str]) -> list[str]:
    """The options (flattened names) whose values differ between these reduced configs (``config_json``)."""
    dicts = [json.loads(c) for c in configs]
    keys = sorted(set().union(*dicts))
    return [k for k in keys if len({json.dumps(d.get(k, "<absent>"), default=str) for d in dicts}) > 1]


def one_config_per_cell(df: pd.DataFrame, by, seed_col: str = "seed") -> tuple[pd.DataFrame, list[str]]:
    """The runs a table may average: in each cell (one value of ``by``) the runs of one configuration.

    Runs are the same configuration when their ``config_id`` (the collector's hash of the resolved config
    without the seed and the options that cannot change results) is equal. A cell whose runs have several
    configurations is left out whole, and a note names the options in which they differ, their values and
    the runs of each: averaging them would report a mean of different experiments as seeds of one, and no
    rule can know which of them the user meant. Within a configuration, a seed run twice (two run
    directories) counts once: its most recently finished run is kept, and a note says so.

    Returns the kept runs and the notes (one line each, for the console and the table's footnotes).
    """
    by = [c for c in by if c in df.columns]
    if df.empty or "config_id" not in df.columns:
        return df, []
    keep, notes = [], []
    groups = df.groupby(by, dropna=False, sort=True) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        cell = ", ".join(f"{c}={v}" for c, v in zip(by, key)) or "all runs"
        if g["config_id"].nunique() > 1:
            configs = g.drop_duplicates("config_id")
            diff = _differing(list(configs["config_json"]))
            parts = []
            for _, c in configs.iterrows():
                vals = json.loads(c["config_json"])
                runs = g[g["config_id"] == c["config_id"]]
                seeds = ",".join(str(s) for s in sorted(runs[seed_col].unique()))
                parts.append(" ".join(f"{k}={vals.get(k, '<absent>')}" for k in diff) + f" (seeds {seeds})")
            notes.append(f"left out {cell}: its {len(g)} runs have {len(configs)} different configurations, "
                         f"differing in {', '.join(diff)}: {'; '.join(parts)}. Keep one configuration's runs "
                         "under the runs root (move the others elsewhere) to tabulate this cell")
            continue
        if g[seed_col].duplicated().any():
            order = g.sort_values("finished", kind="stable") if "finished" in g else g
            dup = sorted(order.loc[order[seed_col].duplicated(keep="last"), seed_col].unique())
            notes.append(f"{cell}: seed(s) {', '.join(map(str, dup))} ran more than once with the same "
                         "configuration; the latest finished run of each is used")
            g = order.drop_duplicates(seed_col, keep="last")
        keep.append(g)
    out = pd.concat(keep).sort_index() if keep else df.iloc[:0]
    return out, notes


def _require(df: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{what}: columns {missing} are not in the runs DataFrame (has: {sorted(df.columns)})")


def mean_std(values) -> tuple[float, float, int]:
    """The suite's one statistic over seeds (every table's): the mean and the sample standard deviation (ddof=1;
    NaN for a single value) of the numbers in ``values`` (a Series, a sequence or None; what is not a number, None
    and NaN are left out), and how many numbers there were. No numbers: ``(nan, nan, 0)``."""
    v = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
    v = pd.to_numeric(v, errors="coerce").dropna()
    if v.empty:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


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
        row["n_seeds"] = int(g[seed_col].nunique())
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_std"], _ = mean_std(g[m])
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

#!/usr/bin/env python
"""Collect run records into tables: <out>/summary/<experiment>.csv (one row per run) and
<out>/tables/<experiment>.md (mean ± std over seeds), for every experiment with a TableSpec or a custom builder.

Each budget is built on its own, into results/local/<budget>/ (git-ignored) by default: smoke runs and your own
runs never touch the published results. Those (results/tables, results/summary, what the README shows) change
only with --publish and the budget they were made with (`make publish BUDGET=cpu`). A table cell averages runs of
one configuration only (ndode.report.tables.one_config_per_cell): a cell whose runs differ in anything but the
seed is left out, with a note that names the differing options. One experiment's problem is reported as an
`error:` line; the others are still built.

Unless W&B is disabled (WANDB_MODE=disabled, or runs made with logger=none), each experiment's
tables and figures (its entry in ndode/report/registry.py) also go to its W&B `summary` run, one
per (experiment, budget), replaced by the next `make tables` (offline: upload with `make sync`).

    python scripts/make_tables.py                      # every experiment and budget -> results/local/<budget>/
    python scripts/make_tables.py --experiment ode_demo --budget cpu
    python scripts/make_tables.py --publish --budget cpu   # the published results/tables, results/summary
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from ndode.harness import atomic_write_text, load_records, load_runs
from ndode.harness.collect import RUN_COLUMNS
from ndode.harness.config import auto_budget
from ndode.report import cnf as C
from ndode.report.dashboard import publish_summaries
from ndode.report.gradients import accuracy_table, gradients_markdown, training_table
from ndode.report.latent_ode import READINGS, poisson_markdown, poisson_table, table2, table2_markdown
from ndode.report.mnist import table1, table1_markdown
from ndode.report.outputs import LOCAL, PUBLISHED, check_publish, output_root
from ndode.report.tables import TABLES, markdown_table, runs_table, seed_table, tabulable


def _summary(part, out: Path, name: str, drop_prefixes=("logger.",), drop=("run_root", "quiet")) -> Path:
    """results/summary/<name>.csv: one row per run, without the columns that say nothing about the result."""
    keep = [c for c in part.columns if not c.startswith(drop_prefixes) and c not in drop and c != "config_json"]
    # the record columns first, then the rest by name: the frame's own column order depends on which other
    # experiments' runs were loaded with this one, and a republished summary must not reorder with them
    keep = [c for c in RUN_COLUMNS if c in keep] + sorted(c for c in keep if c not in RUN_COLUMNS)
    table = part[keep].copy()
    # the runs of every experiment load into one frame, so an integer option another experiment lacks arrives as
    # float (100 -> 100.0): write such a column as the integers the records hold
    for c in table.columns:
        col = table[c]
        if col.dtype.kind == "f" and col.notna().all() and (col == col.round()).all():
            table[c] = col.astype("int64")
    path = out / "summary" / f"{name}.csv"
    atomic_write_text(path, table.to_csv(index=False))
    return path


def mnist(part, out: Path) -> list[Path]:
    """Table 1: results/tables/mnist_table1.{md,csv}, measured beside the paper's values."""
    table = table1(part)
    paths = [out / "tables" / "mnist_table1.md", out / "tables" / "mnist_table1.csv"]
    atomic_write_text(paths[0], f"# MNIST (paper Table 1), measured\n\n{table1_markdown(table)}")
    atomic_write_text(paths[1], table.to_csv(index=False))
    return paths + [_summary(part, out, "mnist", drop_prefixes=("logger.", "data."))]


def latent_ode(part, out: Path) -> list[Path]:
    """Table 2: results/tables/latent_table2.{md,csv}, measured beside the paper's values."""
    table = table2(part, load_records(part, "eval", sorted({r.val for r in READINGS})))
    noise = sorted(part["data.noise_std"].unique()) if "data.noise_std" in part else []
    # which commit(s) the runs ran at, and whether any ran from a dirty tree (issue 23: one clean commit)
    commits = sorted(set(part["git_commit"].dropna().astype(str).str[:7])) if "git_commit" in part else []
    dirty = bool(part["git_dirty"].fillna(False).astype(bool).any()) if "git_dirty" in part else False
    commit = (", ".join(commits) + (" (some from a dirty tree)" if dirty else " (clean)")) if commits else None
    paths = [out / "tables" / "latent_table2.md", out / "tables" / "latent_table2.csv"]
    atomic_write_text(paths[0], "# Latent ODE vs RNNs on irregularly sampled spirals (paper Table 2), measured\n\n"
                      + table2_markdown(table, noise_std=noise[0] if len(noise) == 1 else None, commit=commit))
    atomic_write_text(paths[1], table.to_csv(index=False))
    return paths + [_summary(part, out, "latent_ode")]


def cnf(part, out: Path) -> list[Path]:
    """Figures 4 and 5 and the FFJORD toys: results/tables/cnf_{fig4_loss,fig5_nll,toy_nll}.{md,csv}, and
    cnf_claims.csv (each claim's verdict), cnf_training.csv (each flow's iterations, time, NFE, convergence)."""
    budget, paths = str(part["budget.name"].iloc[0]), []  # main() builds each budget on its own

    def first(col, rows):
        return int(rows[col].iloc[0]) if len(rows) and col in rows else "–"

    dens = part[part["task"] == "density"]
    mle = part[part["data"].isin(C.FIG5_DATA)]
    # a sweep may hold only one figure's runs (e.g. Figure 5 alone): build the tables that have runs
    f4 = C.fig4_table(part) if len(dens) else pd.DataFrame(columns=["target", "model", "size", "kl_mean", "kl_std",
                                                                     "n_seeds"])
    f5 = C.fig5_table(part) if len(mle) else pd.DataFrame(columns=["dataset", "model", "nll_mean", "nll_std",
                                                                    "n_seeds"])
    checks = C.claims(f4, f5)
    flows = part[part["flow"].isin(["planar", "cnf"])]
    cost = C.cost_table(flows, C.convergence(load_records(flows, "train", ["loss"]))) if len(flows) else None
    outputs = [("cnf_fig4_loss", f4, lambda: C.fig4_markdown(f4, checks, budget, first("budget.kl_samples", dens), cost,
                                                           first("budget.kl_grid", dens))),
               ("cnf_fig5_nll", f5, lambda: C.fig5_markdown(f5, checks, budget, first("budget.test_size", mle), cost))]
    if len(checks):
        outputs.append(("cnf_claims", checks, None))
    if cost is not None and len(cost):
        outputs.append(("cnf_training", cost, None))
    toys = part[part["flow"] == "ffjord"]
    if len(toys):
        tt = C.toy_table(part)
        outputs.append(("cnf_toy_nll", tt, lambda: C.toy_markdown(tt, budget, first("budget.test_size", toys),
                                                                  first("steps", toys))))
    for name, table, md in outputs:
        if table.empty:
            continue
        if md is not None:
            paths.append(out / "tables" / f"{name}.md")
            atomic_write_text(paths[-1], md())
        paths.append(out / "tables" / f"{name}.csv")
        atomic_write_text(paths[-1], table.to_csv(index=False))
    return paths + [_summary(part, out, "cnf", drop_prefixes=("logger.", "budget.plan."),
                             drop=("run_root", "quiet", "run_dir"))]


def latent_poisson(part, out: Path) -> list[Path]:
    """The Poisson-process latent ODE: results/tables/latent_poisson.{md,csv} (learned vs homogeneous vs true rate;
    the predictive RMSE with the Poisson term on and off)."""
    table = poisson_table(part)

    def one(col, fmt):
        vals = sorted(part[col].unique()) if col in part else []
        return format(vals[0], fmt) if len(vals) == 1 else None

    lo, hi, sc = (one(f"data.rate_{c}", "g") for c in ("min", "max", "scale"))
    rate = (f"λ(x) = {lo} + ({hi} − {lo}) · σ(x₂ / {sc}) events per time unit, x₂ the spiral's second coordinate"
            if lo and hi and sc else None)
    paths = [out / "tables" / "latent_poisson.md", out / "tables" / "latent_poisson.csv"]
    atomic_write_text(paths[0], "# Latent ODE with Poisson-process observation times (paper §5.1, Figure 7), "
                      "measured\n\n" + poisson_markdown(table, rate=rate, window=one("data.n_extrap", "g")))
    atomic_write_text(paths[1], table.to_csv(index=False))
    return paths + [_summary(part, out, "latent_poisson", drop=("run_root", "quiet", "run_dir"))]


def gradients(part, out: Path) -> list[Path]:
    """The gradient study (docs/gradients.md): results/tables/gradients.{md,csv} (each method's gradient error, NFE,
    time and memory on the trained models) and gradients_training.csv (training with each method)."""
    budget = str(part["budget.name"].iloc[0])
    acc, train = accuracy_table(part), training_table(part)
    paths = [out / "tables" / "gradients.md", out / "tables" / "gradients.csv"]
    atomic_write_text(paths[0], gradients_markdown(acc, train, budget))
    atomic_write_text(paths[1], acc.to_csv(index=False))
    if len(train):
        paths.append(out / "tables" / "gradients_training.csv")
        atomic_write_text(paths[-1], train.to_csv(index=False))
    return paths + [_summary(part, out, "gradients", drop_prefixes=("logger.", "budget.plan."),
                             drop=("run_root", "quiet", "run_dir"))]


# experiments whose tables are more than mean ± std of a few metrics
CUSTOM = {"mnist": mnist, "cnf": cnf, "latent_ode": latent_ode, "latent_poisson": latent_poisson,
          "gradients": gradients}


def _failed_runs(runs, budget: str) -> dict:
    """How many failed runs (status ``failed`` in meta.json) each experiment has at ``budget``: tables leave them
    out and say so."""
    if runs.empty or "budget.name" not in runs:
        return {}
    runs = runs[(runs["status"] == "failed") & (runs["budget.name"].astype(str) == budget)]
    return runs["experiment"].value_counts().to_dict()


def _add_notes(paths, notes: list[str]) -> None:
    """Append the notes (runs left out, and why) to each Markdown table written."""
    if not notes:
        return
    text = "".join(f"\n{n[0].upper()}{n[1:]}.\n" for n in notes)
    for path in paths:
        if str(path).endswith(".md"):
            atomic_write_text(path, Path(path).read_text(encoding="utf-8") + text)


def build(name: str, part, out: Path) -> list[Path]:
    """One experiment's tables (and its summary CSV) from its runs at one budget; returns the files written."""
    if name in CUSTOM:
        return CUSTOM[name](part.dropna(axis=1, how="all"), out)  # other experiments' columns
    spec = TABLES[name]
    csv_path, md_path = out / "summary" / f"{name}.csv", out / "tables" / f"{name}.md"
    atomic_write_text(csv_path, runs_table(part, spec).to_csv(index=False))
    atomic_write_text(md_path, markdown_table(seed_table(part, spec.by, spec.metrics), spec))
    return [csv_path, md_path]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="results/runs", help="root of the run records (default: %(default)s)")
    ap.add_argument("--out", help="writes <out>/summary/*.csv and <out>/tables/*.md (several budgets: "
                    f"<out>/<budget>/...); default: {LOCAL}/<budget>, or with --publish: {PUBLISHED}")
    ap.add_argument("--publish", action="store_true", help=f"write the published results under {PUBLISHED}/ (what "
                    "the README shows); needs one --budget, the one they were made with")
    ap.add_argument("--experiment", action="append", help="only these experiments (repeatable)")
    ap.add_argument("--budget", action="append", help="only runs at these budgets (repeatable; default: every budget "
                    "found, each to its own folder; auto: paper with CUDA, else cpu, as the runs resolve it)")
    args = ap.parse_args(argv)
    budgets = [auto_budget() if b == "auto" else b for b in args.budget or []]
    if args.publish and len(budgets) != 1:
        print("error: --publish needs exactly one --budget (the budget the published results were made with, "
              "e.g. --budget cpu)", file=sys.stderr)
        return 2
    if not Path(args.runs).is_dir():
        print(f"no run records under {args.runs}: run an experiment first (e.g. make demo)", file=sys.stderr)
        return 1
    every = load_runs(args.runs, finished_only=False)
    df = every[every["status"] == "done"] if not every.empty else every
    if df.empty:
        print(f"no finished runs under {args.runs}", file=sys.stderr)
        return 1
    budgets = budgets or sorted(df["budget.name"].dropna().astype(str).unique())
    known = set(TABLES) | set(CUSTOM)
    unknown = sorted(set(args.experiment or ()) - known)
    if unknown:
        print(f"error: no table spec for {unknown}; known: {sorted(known)} (ndode/report/)", file=sys.stderr)
        return 2
    status = 0
    for budget in budgets:
        out = output_root(args.out, args.publish, budget, several=len(budgets) > 1)
        at = df[df["budget.name"].astype(str) == budget]
        failed = _failed_runs(every, budget)
        wanted = args.experiment or sorted(set(at["experiment"]) & known)
        written = []
        for name in wanted:
            part = at[at["experiment"] == name]
            notes = [f"left out {failed[name]} failed run(s) (status 'failed' in their meta.json)"] if name in failed else []
            if part.empty:
                print(f"{name}: no finished runs at budget {budget}, skipped" + "".join(f"; {n}" for n in notes),
                      file=sys.stderr)
                continue
            try:
                if args.publish:
                    check_publish(name, budget)
                part, left_out = tabulable(part, name)
                notes += left_out
                if part.empty:
                    raise ValueError("every cell was left out: " + "; ".join(left_out))
                (out / "summary").mkdir(parents=True, exist_ok=True)
                (out / "tables").mkdir(parents=True, exist_ok=True)
                paths = build(name, part, out)
                _add_notes(paths, notes)
            except (ValueError, KeyError, OSError) as e:
                print(f"error: {name} at budget {budget}: {e}", file=sys.stderr)
                status = 1
                continue
            written.append(name)
            print(f"{name} (budget {budget}): {len(part)} runs -> " + ", ".join(map(str, paths)))
            for n in notes:
                print(f"{name} (budget {budget}): {n}", file=sys.stderr)
        for line in publish_summaries(at, written, out, Path(args.runs)):
            print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Collect run records into tables: results/summary/<experiment>.csv (one row per run) and
results/tables/<experiment>.md (mean ± std over seeds), for every experiment with a TableSpec.

Unless W&B is disabled (WANDB_MODE=disabled, or runs made with logger=none), each experiment's
tables and figures (its entry in ndode/report/registry.py) also go to its W&B `summary` run, one
per (experiment, budget), replaced by the next `make tables` (offline: upload with `make sync`).

    python scripts/make_tables.py                      # all experiments under results/runs
    python scripts/make_tables.py --experiment ode_demo --budget cpu
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ndode.harness import atomic_write_text, load_runs
from ndode.harness.config import auto_budget
from ndode.report import cnf as C
from ndode.report.dashboard import publish_summaries
from ndode.report.latent_ode import poisson_markdown, poisson_table, table2, table2_markdown
from ndode.report.mnist import table1, table1_markdown
from ndode.report.tables import TABLES, markdown_table, runs_table, seed_table


def _summary(part, out: Path, name: str, drop_prefixes=("logger.",), drop=("run_root", "quiet")) -> Path:
    """results/summary/<name>.csv: one row per run, without the columns that say nothing about the result."""
    keep = [c for c in part.columns if not c.startswith(drop_prefixes) and c not in drop]
    path = out / "summary" / f"{name}.csv"
    atomic_write_text(path, part[keep].to_csv(index=False))
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
    table = table2(part)
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
    """Figures 4 and 5 and the FFJORD toys: results/tables/cnf_{fig4_loss,fig5_nll,toy_nll}.{md,csv}."""
    budgets = sorted(set(part["budget.name"]))
    if len(budgets) > 1:
        raise ValueError(f"cnf runs at several budgets {budgets}: choose one with --budget")
    budget, paths = budgets[0], []

    def steps(rows) -> dict:
        return {f"{C.MODEL_LABELS.get(f, f)}": int(s) for f, s in rows.groupby("flow")["steps"].max().items()}

    def first(col, rows):
        return int(rows[col].iloc[0]) if len(rows) else "–"

    dens = part[part["task"] == "density"]
    mle = part[part["data"].isin(C.FIG5_DATA)]
    f4, f5 = C.fig4_table(part), C.fig5_table(part)
    checks = C.claims(f4, f5)
    outputs = [("cnf_fig4_loss", f4, lambda: C.fig4_markdown(f4, checks, budget, first("budget.kl_samples", dens),
                                                             steps(dens))),
               ("cnf_fig5_nll", f5, lambda: C.fig5_markdown(f5, checks, budget, first("budget.test_size", mle),
                                                            steps(mle)))]
    toys = part[part["flow"] == "ffjord"]
    if len(toys):
        tt = C.toy_table(part)
        outputs.append(("cnf_toy_nll", tt, lambda: C.toy_markdown(tt, budget, first("budget.test_size", toys),
                                                                  first("steps", toys))))
    for name, table, md in outputs:
        if table.empty:
            continue
        paths += [out / "tables" / f"{name}.md", out / "tables" / f"{name}.csv"]
        atomic_write_text(paths[-2], md())
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


# experiments whose tables are more than mean ± std of a few metrics
CUSTOM = {"mnist": mnist, "cnf": cnf, "latent_ode": latent_ode, "latent_poisson": latent_poisson}


def _failed_runs(root, budgets) -> dict:
    """How many failed runs (status ``failed`` in meta.json) each experiment has: tables leave them out and say so."""
    runs = load_runs(root, finished_only=False)
    runs = runs[runs["status"] == "failed"]
    if budgets and not runs.empty:
        runs = runs[runs["budget.name"].isin(budgets)]
    return runs["experiment"].value_counts().to_dict() if not runs.empty else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="results/runs", help="root of the run records (default: %(default)s)")
    ap.add_argument("--out", default="results", help="writes <out>/summary/*.csv and <out>/tables/*.md")
    ap.add_argument("--experiment", action="append", help="only these experiments (repeatable)")
    ap.add_argument("--budget", action="append", help="only runs at these budgets (repeatable; auto: paper with CUDA, "
                    "else cpu, as the runs resolve it)")
    args = ap.parse_args(argv)
    args.budget = [auto_budget() if b == "auto" else b for b in args.budget or []] or None
    if not Path(args.runs).is_dir():
        print(f"no run records under {args.runs}: run an experiment first (e.g. make demo)", file=sys.stderr)
        return 1
    df = load_runs(args.runs)
    failed = _failed_runs(args.runs, args.budget)
    if df.empty:
        print(f"no finished runs under {args.runs}", file=sys.stderr)
        return 1
    if args.budget:
        df = df[df["budget.name"].isin(args.budget)]
    known = set(TABLES) | set(CUSTOM)
    wanted = args.experiment or sorted(set(df["experiment"]) & known)
    unknown = sorted(set(wanted) - known)
    if unknown:
        print(f"no table spec for {unknown}; known: {sorted(known)} (ndode/report/)", file=sys.stderr)
        return 2
    out = Path(args.out)
    (out / "summary").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    written = []
    for name in wanted:
        part = df[df["experiment"] == name]
        n_failed = failed.get(name, 0)
        left_out = f"left out {n_failed} failed run(s) (status 'failed' in their meta.json)" if n_failed else ""
        if part.empty:
            print(f"{name}: no finished runs, skipped" + (f"; {left_out}" if left_out else ""), file=sys.stderr)
            continue
        written.append(name)
        if name in CUSTOM:
            paths = CUSTOM[name](part.dropna(axis=1, how="all"), out)  # other experiments' columns
            print(f"{name}: {len(part)} runs -> " + ", ".join(map(str, paths)) + (f"; {left_out}" if left_out else ""))
            continue
        spec = TABLES[name]
        csv_path, md_path = out / "summary" / f"{name}.csv", out / "tables" / f"{name}.md"
        atomic_write_text(csv_path, runs_table(part, spec).to_csv(index=False))
        md = markdown_table(seed_table(part, spec.by, spec.metrics), spec)
        atomic_write_text(md_path, md + (f"\n{left_out[0].upper()}{left_out[1:]}.\n" if left_out else ""))
        print(f"{name}: {len(part)} runs -> {csv_path}, {md_path}" + (f"; {left_out}" if left_out else ""))
    for line in publish_summaries(df, written, out, Path(args.runs)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

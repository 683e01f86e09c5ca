#!/usr/bin/env python
"""Collect run records into tables: results/summary/<experiment>.csv (one row per run) and
results/tables/<experiment>.md (mean ± std over seeds), for every experiment with a TableSpec.

    python scripts/make_tables.py                      # all experiments under results/runs
    python scripts/make_tables.py --experiment ode_demo --budget cpu
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ndode.harness import atomic_write_text, load_runs
from ndode.report.latent_ode import table2, table2_markdown
from ndode.report.mnist import table1, table1_markdown
from ndode.report.tables import TABLES, markdown_table, runs_table, seed_table


def mnist(part, out: Path) -> list[Path]:
    """Table 1: results/tables/mnist_table1.{md,csv}, measured beside the paper's values."""
    table = table1(part)
    paths = [out / "tables" / "mnist_table1.md", out / "tables" / "mnist_table1.csv"]
    atomic_write_text(paths[0], f"# MNIST (paper Table 1), measured\n\n{table1_markdown(table)}")
    atomic_write_text(paths[1], table.to_csv(index=False))
    keep = [c for c in part.columns if not c.startswith(("logger.", "data.")) and c not in ("run_root", "quiet")]
    paths.append(out / "summary" / "mnist.csv")
    atomic_write_text(paths[2], part[keep].to_csv(index=False))
    return paths


def latent_ode(part, out: Path) -> list[Path]:
    """Table 2: results/tables/latent_table2.{md,csv}, measured beside the paper's values."""
    table = table2(part)
    noise = sorted(part["data.noise_std"].unique()) if "data.noise_std" in part else []
    paths = [out / "tables" / "latent_table2.md", out / "tables" / "latent_table2.csv"]
    atomic_write_text(paths[0], "# Latent ODE vs RNNs on irregularly sampled spirals (paper Table 2), measured\n\n"
                      + table2_markdown(table, noise_std=noise[0] if len(noise) == 1 else None))
    atomic_write_text(paths[1], table.to_csv(index=False))
    keep = [c for c in part.columns if not c.startswith("logger.") and c not in ("run_root", "quiet")]
    paths.append(out / "summary" / "latent_ode.csv")
    atomic_write_text(paths[2], part[keep].to_csv(index=False))
    return paths


CUSTOM = {"mnist": mnist, "latent_ode": latent_ode}  # experiments whose tables are more than mean ± std of a few metrics


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="results/runs", help="root of the run records (default: %(default)s)")
    ap.add_argument("--out", default="results", help="writes <out>/summary/*.csv and <out>/tables/*.md")
    ap.add_argument("--experiment", action="append", help="only these experiments (repeatable)")
    ap.add_argument("--budget", action="append", help="only runs at these budgets (repeatable)")
    args = ap.parse_args(argv)
    if not Path(args.runs).is_dir():
        print(f"no run records under {args.runs}: run an experiment first (e.g. make demo)", file=sys.stderr)
        return 1
    df = load_runs(args.runs)
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
    for name in wanted:
        part = df[df["experiment"] == name]
        if part.empty:
            print(f"{name}: no finished runs, skipped", file=sys.stderr)
            continue
        if name in CUSTOM:
            paths = CUSTOM[name](part.dropna(axis=1, how="all"), out)  # other experiments' columns
            print(f"{name}: {len(part)} runs -> " + ", ".join(map(str, paths)))
            continue
        spec = TABLES[name]
        csv_path, md_path = out / "summary" / f"{name}.csv", out / "tables" / f"{name}.md"
        atomic_write_text(csv_path, runs_table(part, spec).to_csv(index=False))
        atomic_write_text(md_path, markdown_table(seed_table(part, spec.by, spec.metrics), spec))
        print(f"{name}: {len(part)} runs -> {csv_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

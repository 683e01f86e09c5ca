#!/usr/bin/env python
"""Collect run records into tables: results/summary/<experiment>.csv (one row per run) and
results/tables/<experiment>.md (mean ± s.e. over seeds), for every experiment with a TableSpec.

    python scripts/make_tables.py                      # all experiments under results/runs
    python scripts/make_tables.py --experiment ode_demo --budget cpu
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ndode.harness import atomic_write_text, load_runs
from ndode.report.tables import TABLES, markdown_table, runs_table, seed_table


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
    wanted = args.experiment or sorted(set(df["experiment"]) & set(TABLES))
    unknown = sorted(set(wanted) - set(TABLES))
    if unknown:
        print(f"no table spec for {unknown}; known: {sorted(TABLES)} (ndode/report/tables.py)", file=sys.stderr)
        return 2
    out = Path(args.out)
    (out / "summary").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    for name in wanted:
        spec, part = TABLES[name], df[df["experiment"] == name]
        if part.empty:
            print(f"{name}: no finished runs, skipped", file=sys.stderr)
            continue
        csv_path, md_path = out / "summary" / f"{name}.csv", out / "tables" / f"{name}.md"
        atomic_write_text(csv_path, runs_table(part, spec).to_csv(index=False))
        atomic_write_text(md_path, markdown_table(seed_table(part, spec.by, spec.metrics), spec))
        print(f"{name}: {len(part)} runs -> {csv_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

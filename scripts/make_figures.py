#!/usr/bin/env python
"""Draw the figures under results/figures/ from run records (no training code is imported).

ode_demo: results/figures/ode_demo.png, from the arrays saved by the chosen run
(default: the cpu-budget run with default settings and seed 0, as `make demo` makes it).

    python scripts/make_figures.py
    python scripts/make_figures.py --experiment ode_demo --run "budget=cpu,seed=0"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ndode.report.figures import plot_ode_demo, save_figure


def ode_demo(runs: Path, out: Path, run: str | None) -> list[Path]:
    run_dir = runs / "ode_demo" / (run or "budget=cpu,seed=0")
    arrays = run_dir / "arrays" / "ode_demo.npz"
    if not (run_dir / "done").exists() or not arrays.exists():
        raise FileNotFoundError(f"no finished ode_demo run with arrays at {run_dir} (run `make demo` first)")
    with np.load(arrays) as z:
        a = dict(z)
    title = f"Spiral ODE demo ({run_dir.name}): true vs learned dynamics"
    return [save_figure(plot_ode_demo(a, title=title), out / "ode_demo.png")]


FIGURES = {"ode_demo": ode_demo}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="results/runs", help="root of the run records (default: %(default)s)")
    ap.add_argument("--out", default="results/figures", help="output directory (default: %(default)s)")
    ap.add_argument("--experiment", action="append", choices=sorted(FIGURES), help="only these (repeatable)")
    ap.add_argument("--run", help="run directory name to draw from (one experiment)")
    args = ap.parse_args(argv)
    names = args.experiment or sorted(FIGURES)
    status = 0
    for name in names:
        try:
            for path in FIGURES[name](Path(args.runs), Path(args.out), args.run):
                print(f"{name}: {path}")
        except FileNotFoundError as e:
            print(f"{name}: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

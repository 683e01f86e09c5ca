#!/usr/bin/env python
"""Draw the figures from run records (no training code is imported), each budget's into its own folder:
results/local/<budget>/figures/ (git-ignored) by default, the published results/figures/ only with --publish and
the budget they were made with (`make publish BUDGET=cpu`). An experiment without runs at a budget is skipped;
one experiment's problem is an `error:` line and the others are still drawn.

ode_demo: results/figures/ode_demo.png, from the arrays saved by the chosen run
(default: the cpu-budget run with default settings and seed 0, as `make demo` makes it).
mnist: results/figures/mnist_fig3.png (the paper's Figure 3) from the ODE-Net run's sweep and metrics.
cnf: results/figures/cnf_fig4.png, cnf_fig5.png, cnf_toy.png from the arrays and records of every finished cnf run
at the budget (default cpu), the lowest seed's arrays for the density panels; cnf_fig4_curves.png and
cnf_fig5_curves.png, the learning curves of every run (the convergence check's evidence).
latent_ode: results/figures/latent_fig8.png and latent_fig9.png (the paper's Figures 8 and 9) from the
arrays of the RNN (its variant chosen on validation) and latent-ODE runs at n_obs = 30, lowest seed; and
latent_learning_curves.png from every run's metrics.jsonl.
latent_poisson: results/figures/latent_fig7.png (the paper's Figure 7) from the Poisson-term-on run with the lowest
seed at the budget.
gradients: results/figures/gradients.png (docs/gradients.md) from every gradients run at the budget.

    python scripts/make_figures.py
    python scripts/make_figures.py --experiment ode_demo --run "budget=cpu,seed=0"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ndode.harness import read_jsonl
from ndode.harness.config import auto_budget
from ndode.report.figures import plot_ode_demo, save_figure
from ndode.report.latent_ode import plot_fig7, plot_fig8, plot_fig9
from ndode.report.mnist import plot_fig3
from ndode.report.outputs import LOCAL, PUBLISHED, check_publish, output_root


def ode_demo(runs: Path, out: Path, run: str | None, budget: str | None = None) -> list[Path]:
    run_dir = runs / "ode_demo" / (run or f"budget={budget or 'cpu'},seed=0")
    arrays = run_dir / "arrays" / "ode_demo.npz"
    if not (run_dir / "done").exists() or not arrays.exists():
        raise FileNotFoundError(f"no finished ode_demo run with arrays at {run_dir} (run `make demo` first)")
    with np.load(arrays) as z:
        a = dict(z)
    title = f"Spiral ODE demo ({run_dir.name}): true vs learned dynamics"
    return [save_figure(plot_ode_demo(a, title=title), out / "ode_demo.png")]


def mnist(runs: Path, out: Path, run: str | None, budget: str | None = None) -> list[Path]:
    """Figure 3 from the ODE-Net run (default: budget=<budget>,model=odenet,seed=0)."""
    import pandas as pd

    run_dir = runs / "mnist" / (run or f"budget={budget or 'cpu'},model=odenet,seed=0")
    sweep = run_dir / "arrays" / "fig3_sweep.csv"
    if not (run_dir / "done").exists() or not sweep.exists():
        raise FileNotFoundError(f"no finished ODE-Net run with a Figure 3 sweep at {run_dir} "
                                "(run `make reproduce-mnist BUDGET=cpu` first)")
    train = pd.DataFrame([r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "train"])
    fig = plot_fig3(pd.read_csv(sweep), train, title=f"MNIST ODE-Net ({run_dir.name}): the paper's Figure 3, measured")
    return [save_figure(fig, out / "mnist_fig3.png")]


def latent_ode(runs: Path, out: Path, run: str | None, budget: str | None = None) -> list[Path]:
    """Figures 8 and 9 at n_obs = 30 from the lowest seed of the latent ODE and of the plain RNN's variant chosen on
    the validation split (``--run`` names the latent-ODE run; the RNN run is the same name with model=rnn), and the
    learning curves (latent_learning_curves.png) from the metrics.jsonl of every finished run at the budget."""
    import pandas as pd

    from ndode.harness import load_records, load_runs
    from ndode.report.latent_ode import READINGS, figure8_runs, plot_learning_curves

    b = budget or "cpu"
    root = runs / "latent_ode"
    df = load_runs(root) if root.is_dir() else pd.DataFrame(columns=["budget.name"])
    df = df[df["budget.name"] == b] if len(df) else df
    if run:
        dirs = {m: root / run.replace("model=latent_ode", f"model={m}") for m in ("rnn", "latent_ode")}
    else:
        dirs = {m: Path(d) for m, d in figure8_runs(df, b).items()} if len(df) else {}
    arrays = {}
    for model in ("rnn", "latent_ode"):
        run_dir = dirs.get(model)
        path = run_dir / "arrays" / "spirals.npz" if run_dir else None
        if path is None or not (run_dir / "done").exists() or not path.exists():
            raise FileNotFoundError(f"no finished {model} run with arrays at n_obs = 30, budget {b}, under {root} "
                                    "(run `make reproduce-latent-ode BUDGET=cpu` first)")
        with np.load(path) as z:
            arrays[model] = dict(z)
    n_obs = int(arrays["latent_ode"]["n_obs"])
    fig8 = plot_fig8(arrays["rnn"], arrays["latent_ode"], title=(
        f"Reconstruction and extrapolation from {n_obs} irregular observations (the paper's Figure 8), "
        f"{dirs['latent_ode'].name} and {dirs['rnn'].name}"))
    fig9 = plot_fig9(arrays["latent_ode"], title=(
        f"Varying one dimension of the latent initial state (the paper's Figure 9), {dirs['latent_ode'].name}"))
    paths = [save_figure(fig8, out / "latent_fig8.png"), save_figure(fig9, out / "latent_fig9.png")]
    keys = ("model.name", "data.n_obs", "seed", "model.feed_prev")
    evals = load_records(df.assign(**{"model.feed_prev": df.get("model.feed_prev", 0.0)}), "eval",
                         sorted({r.val for r in READINGS}), keys).rename(
        columns={"model.name": "model", "data.n_obs": "n_obs"})
    evals["model.feed_prev"] = pd.to_numeric(evals["model.feed_prev"], errors="coerce").fillna(0.0)
    if len(evals):
        fig = plot_learning_curves(evals, int(df["budget.steps"].max()),
                                   title=f"Latent ODE vs RNNs, budget {b}: validation RMSE during training (median "
                                         "over seeds, band: range); shaded: the last 20% of training")
        paths.append(save_figure(fig, out / "latent_learning_curves.png"))
    return paths


def cnf(runs: Path, out: Path, run: str | None, budget: str | None = None) -> list[Path]:
    """Figures 4 and 5 and the FFJORD toy grid, from every finished cnf run at ``budget`` (default cpu)."""
    import pandas as pd

    from ndode.harness import load_records, load_runs
    from ndode.report import cnf as C
    from ndode.report.tables import tabulable

    if run is not None:
        raise ValueError("cnf figures combine many runs; use --budget, not --run")
    budget = budget or "cpu"
    root = runs / "cnf"
    df = load_runs(root) if root.is_dir() else pd.DataFrame()
    if not df.empty:
        df = df[df["budget.name"] == budget]
    if df.empty:
        raise FileNotFoundError(f"no finished cnf runs at budget={budget} under {root} "
                                f"(run `make reproduce-cnf BUDGET={budget}` first)")
    df, notes = tabulable(df, "cnf")  # one configuration per panel, as in the tables
    for n in notes:
        print(f"cnf (budget {budget}): {n}", file=sys.stderr)
    df = df.sort_values("seed", kind="stable")

    def arrays(rows, key):
        got = {}
        for _, r in rows.iterrows():
            k = key(r)
            path = Path(r["run_dir"]) / "arrays" / "cnf.npz"
            if k not in got and path.exists():
                with np.load(path) as z:
                    got[k] = dict(z)
        return got

    def curves(rows, row, col, metric):
        """Train-loss and validation records of ``rows`` for plot_curves (panel row/col from each run)."""
        rows = rows.assign(row=rows.apply(row, axis=1), col=rows.apply(col, axis=1), model=rows["flow"])
        keys = ("row", "col", "model", "steps")
        parts = [load_records(rows, kind, [value], keys).rename(columns={value: "value"}).assign(kind=kind)
                 for kind, value in (("train", "loss"), ("eval", metric))]
        rec = pd.concat(parts, ignore_index=True).dropna(subset=["value"])
        return rec[["row", "col", "model", "run", "kind", "step", "steps", "value"]]

    paths = []
    dens = df[(df["task"] == "density") & df["flow"].isin(["planar", "cnf"])]
    if len(dens):
        a = arrays(dens, lambda r: (r["data"], r["flow"], int(r["size"])))
        fig = C.plot_fig4(a, C.fig4_table(df), title=f"Density matching (paper Figure 4), budget={budget}: "
                          "target, planar flows (K layers), CNFs (M units), final KL(q‖p)")
        paths.append(save_figure(fig, out / "cnf_fig4.png"))
        rec = curves(dens, lambda r: r["data"], lambda r: f"K = M = {int(r['size'])}", "kl_val")
        sizes = sorted(dens["size"].astype(int).unique())
        fig = C.plot_curves(rec, sorted(dens["data"].unique()), [f"K = M = {k}" for k in sizes],
                            title=f"Figure 4 learning curves, budget={budget}: batch KL(q‖p) (lines), validation KL "
                            "(dots); shaded: the last 20 % that must be flat", ylabel="KL(q‖p) (nats)")
        paths.append(save_figure(fig, out / "cnf_fig4_curves.png"))
    fig5 = df[df["data"].isin(C.FIG5_DATA) & df["flow"].isin(["planar", "cnf"])]
    if len(fig5):
        a = arrays(fig5, lambda r: (r["data"], r["flow"]))
        fig = C.plot_fig5(a, title=f"Noise to data (paper Figure 5), budget={budget}: planar flow K=64 vs CNF M=64, "
                          "density and samples along the flow")
        paths.append(save_figure(fig, out / "cnf_fig5.png"))
        rec = curves(fig5, lambda r: C.DATA_LABELS[r["data"]], lambda r: "", "nll_val")
        fig = C.plot_curves(rec, [C.DATA_LABELS[d] for d in C.FIG5_DATA if d in set(fig5["data"])], [""],
                            title=f"Figure 5 learning curves, budget={budget}: batch NLL (lines), validation NLL "
                            "(dots)",
                            ylabel="NLL (nats)")
        paths.append(save_figure(fig, out / "cnf_fig5_curves.png"))
    toys = df[df["flow"] == "ffjord"]
    if len(toys):
        a = arrays(toys, lambda r: r["data"])
        rec = load_records(toys.drop_duplicates("data"), "train", ["nfe_forward", "nfe_backward"], ("data",))
        fig = C.plot_toy(a, rec.rename(columns={"data": "dataset"}), C.toy_table(df),
                         title=f"FFJORD toy densities, budget={budget}")
        paths.append(save_figure(fig, out / "cnf_toy.png"))
    return paths


def latent_poisson(runs: Path, out: Path, run: str | None, budget: str | None = None) -> list[Path]:
    """Figure 7 from the finished Poisson-term-on run at ``budget`` with the lowest seed (or ``--run``)."""
    from ndode.harness import load_runs

    if run:
        run_dir = runs / "latent_poisson" / run
    else:
        df = load_runs(runs) if runs.is_dir() else None
        if df is not None and not df.empty:
            df = df[(df["experiment"] == "latent_poisson") & (df["budget.name"] == (budget or "cpu"))]
            df = df[df["model.poisson"].astype(bool)] if "model.poisson" in df else df.iloc[:0]
        if df is None or df.empty:
            raise FileNotFoundError(f"no finished latent_poisson run with the Poisson term on at budget "
                                    f"{budget or 'cpu'} under {runs} (run `make reproduce-poisson BUDGET=cpu` first)")
        run_dir = Path(df.sort_values("seed").iloc[0]["run_dir"])
    path = run_dir / "arrays" / "poisson.npz"
    if not (run_dir / "done").exists() or not path.exists():
        raise FileNotFoundError(f"no finished latent_poisson run with arrays at {run_dir} "
                                "(run `make reproduce-poisson BUDGET=cpu` first)")
    with np.load(path) as z:
        a = dict(z)
    return [save_figure(plot_fig7(a, title=f"Observation times as a Poisson process with a learned rate (the paper's "
                                  f"Figure 7), {run_dir.name}; dashed line: end of the observation window"),
                        out / "latent_fig7.png")]


def gradients(runs: Path, out: Path, run: str | None, budget: str | None = None) -> list[Path]:
    """The gradient study (docs/gradients.md) from every finished gradients run at ``budget`` (default cpu)."""
    import pandas as pd

    from ndode.harness import load_runs
    from ndode.report.gradients import accuracy_table, plot_gradients, training_table
    from ndode.report.tables import tabulable

    if run is not None:
        raise ValueError("the gradients figure combines many runs; use --budget, not --run")
    budget = budget or "cpu"
    root = runs / "gradients"
    df = load_runs(root) if root.is_dir() else pd.DataFrame()
    df = df[df["budget.name"].astype(str) == budget] if not df.empty else df
    acc = accuracy_table(tabulable(df, "gradients")[0]) if not df.empty else df
    if df.empty or acc.empty:
        raise FileNotFoundError(f"no finished gradients runs at budget={budget} under {root} "
                                f"(run `make reproduce-gradients BUDGET={budget}` first)")
    fig = plot_gradients(acc, training_table(tabulable(df, "gradients")[0]),
                         title=f"Which gradient? Backprop, checkpointed and backsolve adjoint on the trained models, "
                               f"budget={budget}")
    return [save_figure(fig, out / "gradients.png")]


FIGURES = {"ode_demo": ode_demo, "mnist": mnist, "cnf": cnf, "latent_ode": latent_ode, "latent_poisson": latent_poisson,
           "gradients": gradients}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="results/runs", help="root of the run records (default: %(default)s)")
    ap.add_argument("--out", help=f"output directory (several budgets: <out>/<budget>); default: {LOCAL}/<budget>/"
                    f"figures, or with --publish: {PUBLISHED}/figures")
    ap.add_argument("--publish", action="store_true", help="write the published figures (what the README shows); "
                    "needs one --budget, the one they were made with")
    ap.add_argument("--experiment", action="append", choices=sorted(FIGURES), help="only these (repeatable)")
    ap.add_argument("--run", help="run directory name to draw from (one experiment)")
    ap.add_argument("--budget", action="append", help="draw from the runs at this budget (repeatable; default: every "
                    "budget found, each to its own folder; auto: paper with CUDA, else cpu, as the runs resolve it)")
    args = ap.parse_args(argv)
    budgets = [auto_budget() if b == "auto" else b for b in args.budget or []]
    if args.publish and len(budgets) != 1:
        print("error: --publish needs exactly one --budget (the budget the published figures were made with, "
              "e.g. --budget cpu)", file=sys.stderr)
        return 2
    runs = Path(args.runs)
    if not budgets and args.run and args.run.startswith("budget="):  # a run name says its budget
        budgets = [args.run.split(",")[0].split("=", 1)[1]]
    if not budgets:
        from ndode.harness import load_runs

        found = load_runs(runs) if runs.is_dir() else None
        budgets = sorted(found["budget.name"].dropna().astype(str).unique()) if found is not None and len(found) else []
        if not budgets:
            print(f"no finished runs under {runs}: run an experiment first (e.g. make demo)", file=sys.stderr)
            return 1
    names = args.experiment or sorted(FIGURES)
    status = 0
    for budget in budgets:
        root = output_root(args.out, args.publish, budget, several=len(budgets) > 1)
        out = root if args.out else root / "figures"  # --out names the figures' own folder
        for name in names:
            try:
                if args.publish:
                    check_publish(name, budget)
                for path in FIGURES[name](runs, out, args.run, budget):
                    print(f"{name} (budget {budget}): {path}")
            except FileNotFoundError as e:
                if args.experiment:  # asked for by name: its runs must be there
                    print(f"error: {name} at budget {budget}: {e}", file=sys.stderr)
                    status = 1
                else:
                    print(f"{name} (budget {budget}): skipped, {e}", file=sys.stderr)
            except (ValueError, KeyError, OSError) as e:
                print(f"error: {name} at budget {budget}: {e}", file=sys.stderr)
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

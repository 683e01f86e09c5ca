"""The gradient study's table and figure (docs/gradients.md), pure functions of the collector's DataFrame.

The runs of experiment ``gradients`` are of two kinds:

* accuracy runs (:mod:`ndode.experiments.gradients`, a ``source`` column): one trained model at one tolerance, every
  gradient method measured, flattened as ``<method>.<metric>`` (``ndode.gradients.compare``);
* training runs (``experiments/cnf.py`` / ``latent_ode.py`` with ``experiment=gradients solver.adjoint=...``):
  the Figure 5 CNF and the latent ODE at n = 30, trained with each gradient method, a few seeds each.

No training code is imported here.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .tables import mean_std, mean_std_cell

__all__ = ["METHOD_LABELS", "SOURCE_LABELS", "TRAINING_METRICS", "accuracy_table", "training_table", "verdict",
           "gradients_markdown", "plot_gradients"]

# the accuracy table's rows (ndode.gradients.METHODS; repeated here: the report imports no training code)
METHOD_LABELS = {"direct": "direct backprop", "checkpoint": "checkpointed adjoint",
                 "backsolve_seminorm": "backsolve, seminorm", "backsolve_full": "backsolve, full norm"}
SOURCE_LABELS = {"mnist": "MNIST ODE-Net", "cnf": "CNF, Two Moons (Fig. 5)", "latent_ode": "latent ODE, n = 30",
                 "latent_poisson": "Poisson latent ODE"}
# the training runs' solver.adjoint values (older records: True/False)
ADJOINT_LABELS = {"none": "direct backprop", "checkpoint": "checkpointed adjoint", "backsolve": "backsolve adjoint"}
ADJOINT_ORDER = ("none", "checkpoint", "backsolve")
# what each training experiment is scored by: (label, validation column, test column); choices on validation
TRAINING_METRICS = {
    "cnf": (("NLL (nats)", "nll_val", "nll_test"),),
    "latent_ode": (("RMSE, window (a)", "val_rmse_window_noisy", "test_rmse_window_noisy"),
                   ("RMSE, extrapolation (b)", "val_rmse_extrap_clean", "test_rmse_extrap_clean")),
}
TRAINING_LABELS = {"cnf": "CNF, Two Moons (Fig. 5)", "latent_ode": "latent ODE, n = 30"}
MIB = 2**20
ACCURACY_COLUMNS = ["budget", "source", "tol", "method", "rel_err", "cos", "rel_err_ode", "rel_err_tight",
                    "nfe_forward", "nfe_backward", "time_s", "saved_mib", "peak_mib", "failed", "error",
                    "check_rel_err", "same_forward", "source_run", "source_commit", "run"]
TRAINING_COLUMNS = ["budget", "experiment", "metric", "adjoint", "n_seeds", "val_mean", "val_std", "test_mean",
                    "test_std", "verdict", "diff_vs_checkpoint", "se_diff", "wall_time_s_mean", "nfe_forward_mean",
                    "nfe_backward_mean", "solver_rtol", "runs"]


def _num(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def _adjoint(v) -> str:
    s = str(v).lower()
    return {"true": "backsolve", "false": "none", "nan": "none", "none": "none"}.get(s, s)


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (budget, source, tol, method) of the accuracy runs: each method's gradient against the
    checkpointed adjoint's (``rel_err``, ``cos``; ``rel_err_ode``: the solved function's parameters only;
    ``rel_err_tight``: against the checkpointed adjoint at the budget's ``ref_tol``), NFE-F, NFE-B, time and
    saved bytes (MiB); ``check_rel_err`` (direct vs checkpointed) and ``same_forward`` per run; the source run's
    name and commit."""
    if "source" not in df.columns:
        return pd.DataFrame(columns=ACCURACY_COLUMNS)
    part = df[df["source"].notna()]
    rows = []
    order = {m: i for i, m in enumerate(METHOD_LABELS)}
    src_order = {s: i for i, s in enumerate(SOURCE_LABELS)}
    for _, r in part.iterrows():
        for m in METHOD_LABELS:
            if f"{m}.rel_err" not in r or pd.isna(r.get(f"{m}.failed")):
                continue
            commit = r.get("source_commit")
            rows.append({
                "budget": r["budget.name"], "source": r["source"], "tol": _num(r["tol"]), "method": m,
                "rel_err": _num(r[f"{m}.rel_err"]), "cos": _num(r[f"{m}.cos"]),
                "rel_err_ode": _num(r.get(f"{m}.rel_err_ode")), "rel_err_tight": _num(r.get(f"{m}.rel_err_tight")),
                "nfe_forward": _num(r.get(f"{m}.nfe_forward")), "nfe_backward": _num(r.get(f"{m}.nfe_backward")),
                "time_s": _num(r.get(f"{m}.time_s")), "saved_mib": _num(r.get(f"{m}.saved_bytes")) / MIB,
                "peak_mib": _num(r.get(f"{m}.peak_bytes")) / MIB, "failed": bool(_num(r.get(f"{m}.failed")) == 1),
                "error": r.get(f"{m}.error") if isinstance(r.get(f"{m}.error"), str) else None,
                "check_rel_err": _num(r.get("check_rel_err")), "same_forward": bool(_num(r.get("same_forward")) == 1),
                "source_run": r.get("source_run_name"),
                "source_commit": str(commit)[:7] if isinstance(commit, str) else None, "run": r.get("run"),
            })
    out = pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
    if out.empty:
        return out
    out = out.assign(_s=out["source"].map(src_order).fillna(99), _m=out["method"].map(order))
    return out.sort_values(["budget", "_s", "tol", "_m"], ascending=[True, True, False, True]) \
        .drop(columns=["_s", "_m"]).reset_index(drop=True)


def _training_experiment(r) -> str | None:
    if isinstance(r.get("flow"), str):
        return "cnf"
    if str(r.get("model.name")) == "latent_ode":
        return "latent_ode"
    return None


def verdict(a_mean: float, a_std: float, a_n: int, b_mean: float, b_std: float, b_n: int) -> tuple[str, float, float]:
    """``(verdict, a − b, se)``: ``tie`` when ``|a − b| <= 2·se`` with ``se = √(s²_a/n_a + s²_b/n_b)`` (seed noise),
    else ``differs``; ``few seeds`` with fewer than 2 seeds on a side."""
    diff = a_mean - b_mean
    if a_n < 2 or b_n < 2 or not (np.isfinite(a_std) and np.isfinite(b_std)):
        return "few seeds", diff, math.nan
    se = math.sqrt(a_std**2 / a_n + b_std**2 / b_n)
    return ("tie" if abs(diff) <= 2 * se else "differs"), diff, se


def training_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (budget, experiment, metric, gradient method) of the training runs: validation and test
    metric, mean ± std over seeds; ``verdict``: the validation mean against the checkpointed adjoint's (the exact
    gradient), within seed noise (``tie``) or not (``differs``)."""
    if df.empty:
        return pd.DataFrame(columns=TRAINING_COLUMNS)
    kinds = df.apply(_training_experiment, axis=1) if len(df) else pd.Series(dtype=object)
    part = df.assign(_exp=kinds, _adj=[_adjoint(v) for v in df.get("solver.adjoint", pd.Series(index=df.index))])
    part = part[part["_exp"].notna()]
    rows = []
    for (budget, exp), g in part.groupby(["budget.name", "_exp"], sort=True):
        for label, val, test in TRAINING_METRICS[exp]:
            stats = {adj: (h, mean_std(h.get(val)), mean_std(h.get(test))) for adj, h in g.groupby("_adj")}
            ref = stats.get("checkpoint")
            for adj in sorted(stats, key=lambda a: ADJOINT_ORDER.index(a) if a in ADJOINT_ORDER else 99):
                h, (vm, vs, vn), (tm, ts, _) = stats[adj]
                if ref is not None and adj != "checkpoint":
                    verd, diff, se = verdict(vm, vs, vn, *ref[1])
                else:
                    verd, diff, se = ("reference" if adj == "checkpoint" else "no reference"), math.nan, math.nan
                rows.append({
                    "budget": budget, "experiment": exp, "metric": label, "adjoint": adj,
                    "n_seeds": int(h["seed"].nunique()), "val_mean": vm, "val_std": vs, "test_mean": tm,
                    "test_std": ts, "verdict": verd, "diff_vs_checkpoint": diff, "se_diff": se,
                    "wall_time_s_mean": _mean(h, "wall_time_s"), "nfe_forward_mean": _mean(h, "nfe_forward"),
                    # direct backprop solves nothing backwards (the CNF's records say 0)
                    "nfe_backward_mean": math.nan if adj == "none" else _mean(h, "nfe_backward"),
                    "solver_rtol": _mean(h, "solver.rtol"), "runs": len(h),
                })
    return pd.DataFrame(rows, columns=TRAINING_COLUMNS)


def _mean(h: pd.DataFrame, col: str) -> float:
    return mean_std(h.get(col))[0]


def _g(x, fmt=".2g") -> str:
    return "–" if x is None or x != x else format(x, fmt)


def gradients_markdown(acc: pd.DataFrame, train: pd.DataFrame, budget: str) -> str:
    """Both tables as Markdown, with what each column means."""
    lines = [f"# Which gradient? Direct backprop, the checkpointed and the backsolve adjoint (budget {budget})", ""]
    if len(acc):
        lines += ["## Gradient accuracy on the trained models", "",
                  "On one fixed training batch of each trained model (its final checkpoint), every method "
                  "differentiates the same forward solve at rtol = atol = tol. *rel. error* and *cos* compare each "
                  "gradient with the checkpointed adjoint's, the exact gradient of that discrete solve (direct "
                  "backprop agrees with it to float32 rounding: *check*); *ODE params* restricts the error to the "
                  "parameters inside the solved function; *vs tight* compares with the checkpointed adjoint at "
                  "tol 1e-7. Time is forward + backward (median of the timed passes), memory the bytes autograd "
                  "keeps for the backward pass (parameters excluded), both from the same run.", "",
                  "| model | tol | method | rel. error | cos | ODE params | vs tight | NFE-F | NFE-B | time (s) | "
                  "saved (MiB) |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for _, r in acc.iterrows():
            err = "failed" if r["failed"] else _g(r["rel_err"])
            lines.append(f"| {SOURCE_LABELS.get(r['source'], r['source'])} | {r['tol']:.0e} | "
                         f"{METHOD_LABELS[r['method']]} | {err} | {_g(r['cos'], '.6f')} | {_g(r['rel_err_ode'])} | "
                         f"{_g(r['rel_err_tight'])} | {_g(r['nfe_forward'], '.0f')} | {_g(r['nfe_backward'], '.0f')} "
                         f"| {_g(r['time_s'], '.3g')} | {_g(r['saved_mib'], '.3g')} |")
        lines.append("")
        srcs = acc.drop_duplicates(["source", "source_run", "source_commit"])
        lines += ["Source runs: " + "; ".join(f"{SOURCE_LABELS.get(r['source'], r['source'])}: `{r['source_run']}` "
                                              f"at commit {r['source_commit'] or 'unknown'}" for _, r in srcs.iterrows())
                  + ".", ""]
        checks = acc.drop_duplicates("run")
        worst = pd.to_numeric(checks["check_rel_err"], errors="coerce").max()
        same = bool(checks["same_forward"].all())
        lines += [f"Check: direct backprop vs the checkpointed adjoint, largest relative difference {_g(worst)}; "
                  f"every method's loss equal (the same forward solve): {'yes' if same else 'NO'}.", ""]
        bad = acc[acc["failed"]]
        for _, r in bad.iterrows():
            lines.append(f"- {SOURCE_LABELS.get(r['source'], r['source'])}, tol {r['tol']:.0e}, "
                         f"{METHOD_LABELS[r['method']]} failed: {r['error']}")
        if len(bad):
            lines.append("")
    if len(train):
        lines += ["## Does it matter for training?", "",
                  "The same experiment trained with each gradient method (`solver.adjoint`), at its budget's "
                  "tolerance, mean ± std over seeds. *verdict* compares the validation mean with the checkpointed "
                  "adjoint's: `tie` when the difference is within twice its standard error (seed noise).", "",
                  "| experiment | metric | gradient | seeds | validation | test | verdict (validation) | "
                  "time per run (s) | NFE-F | NFE-B |",
                  "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
        for _, r in train.iterrows():
            lines.append(f"| {TRAINING_LABELS.get(r['experiment'], r['experiment'])} | {r['metric']} | "
                         f"{ADJOINT_LABELS.get(r['adjoint'], r['adjoint'])} | {r['n_seeds']} | "
                         f"{mean_std_cell(r['val_mean'], r['val_std'], '.4g')} | "
                         f"{mean_std_cell(r['test_mean'], r['test_std'], '.4g')} | {r['verdict']} | "
                         f"{_g(r['wall_time_s_mean'], '.3g')} | {_g(r['nfe_forward_mean'], '.1f')} | "
                         f"{_g(r['nfe_backward_mean'], '.1f')} |")
        lines.append("")
    return "\n".join(lines)


def plot_gradients(acc: pd.DataFrame, train: pd.DataFrame, title: str | None = None) -> Figure:
    """(a) each method's relative gradient error against the tolerance, per model; (b) its time relative to direct
    backprop; (c) the training runs' validation metric per gradient method (mean ± std over seeds)."""
    n = 2 + (1 if len(train) else 0)
    fig = Figure(figsize=(5.2 * n, 4.2))
    axes = fig.subplots(1, n)
    colors = dict(zip(SOURCE_LABELS, ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")))
    styles = {"direct": ":", "checkpoint": "-.", "backsolve_seminorm": "-", "backsolve_full": "--"}
    ax = axes[0]
    for (src, m), g in acc.groupby(["source", "method"], sort=False):
        if m == "checkpoint":  # the reference: 0 by definition
            continue
        g = g.sort_values("tol")
        y = g["rel_err"].where(~g["failed"].astype(bool))
        ax.plot(g["tol"], y.clip(lower=1e-12), styles[m], marker="o", ms=3, color=colors.get(src, "k"))
    ax.set(xscale="log", yscale="log", xlabel="rtol = atol", ylabel="‖g − g_checkpoint‖ / ‖g_checkpoint‖",
           title="(a) gradient error vs the exact discrete gradient")
    ax.invert_xaxis()
    present = [s for s in SOURCE_LABELS if s in set(acc["source"])]
    ax.legend([Line2D([], [], color=colors[s], marker="o", ms=3) for s in present],
              [SOURCE_LABELS[s] for s in present], fontsize=7, title="model (colour)", title_fontsize=7)
    ax = axes[1]
    for (src, m), g in acc.groupby(["source", "method"], sort=False):
        if m == "direct":
            continue
        g = g.sort_values("tol")
        direct = acc[(acc["source"] == src) & (acc["method"] == "direct")].set_index("tol")["time_s"]
        ratio = g.set_index("tol")["time_s"] / direct.reindex(g["tol"]).to_numpy()
        ax.plot(ratio.index, ratio.to_numpy(), styles[m], marker="o", ms=3, color=colors.get(src, "k"))
    ax.axhline(1.0, color="0.6", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="rtol = atol", ylabel="time ÷ direct backprop's",
           title="(b) cost of forward + backward")
    ax.invert_xaxis()
    ax.legend([Line2D([], [], color="0.3", ls=styles[m]) for m in METHOD_LABELS],
              [METHOD_LABELS[m] + (" (in (a): check)" if m == "direct" else "") for m in METHOD_LABELS], fontsize=7,
              title="method (line style)", title_fontsize=7)
    if len(train):
        ax = axes[2]
        first = train.drop_duplicates(["experiment", "adjoint"])  # each experiment's first metric
        first = first[first["metric"] == first["experiment"].map(lambda e: TRAINING_METRICS[e][0][0])]
        labels = [f"{TRAINING_LABELS.get(e, e)}\n{ADJOINT_LABELS.get(a, a)}"
                  for e, a in zip(first["experiment"], first["adjoint"])]
        # each experiment on its own scale: relative to its checkpointed-adjoint mean
        base = first.groupby("experiment")["val_mean"].transform(
            lambda v: v[first.loc[v.index, "adjoint"] == "checkpoint"].mean())
        ax.errorbar(range(len(first)), first["val_mean"] / base, yerr=first["val_std"] / base.abs(), fmt="o",
                    capsize=3)
        ax.set_xticks(range(len(first)), labels, fontsize=6, rotation=30, ha="right")
        ax.axhline(1.0, color="0.6", lw=0.8)
        ax.set(ylabel="validation metric ÷ checkpointed adjoint's", title="(c) training: mean ± std over seeds")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

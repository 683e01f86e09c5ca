"""The latent-ODE experiment's Table 2 and Figures 8 and 9, and the Poisson-process variant's table and
Figure 7, as pure functions of run records.

No training code is imported: the inputs are the collector's DataFrame
(``load_runs``) and the arrays each run saves (``arrays/spirals.npz``,
``arrays/poisson.npz``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .convergence import FRACTION, is_flat, tail_trend
from .tables import mean_std, mean_std_cell, seed_table

__all__ = ["PAPER_TABLE2", "MODEL_ORDER", "N_OBS", "READINGS", "VARIANT_KEYS", "WITHIN_FACTOR", "FLAT_REL",
           "select_on_validation", "convergence", "table2", "verdicts", "table2_markdown", "figure8_runs", "plot_fig8",
           "plot_fig9", "plot_learning_curves", "POISSON_METRICS", "poisson_table", "poisson_markdown", "plot_fig7"]

MODEL_ORDER = ("rnn", "rnn_dt", "latent_ode")
MODEL_LABELS = {"rnn": "RNN", "rnn_dt": "RNN + time gaps", "latent_ode": "Latent ODE"}
RNNS = ("rnn", "rnn_dt")
N_OBS = (30, 50, 100)
# Chen et al. (2018), Table 2: "Predictive RMSE on test set". The paper has one RNN row; it serves both RNN variants.
PAPER_TABLE2 = {
    "rnn": {30: 0.3937, 50: 0.3202, 100: 0.1813},
    "rnn_dt": {30: 0.3937, 50: 0.3202, 100: 0.1813},
    "latent_ode": {30: 0.1642, 50: 0.1502, 100: 0.1346},
}


@dataclass(frozen=True)
class Reading:
    """One of Table 2's readings: the run summary's test and validation columns and its exact definition."""

    key: str
    metric: str  # the spiral_readings key (ndode/data/spirals.py): test_<metric>, val_<metric>, test_<metric>_paper_tol
    title: str
    stat: str  # "mean" or "median": the centre a verdict compares (with the spread beside it in the table)

    @property
    def test(self) -> str:
        return f"test_{self.metric}"

    @property
    def val(self) -> str:
        return f"val_{self.metric}"


# The issue-23 readings (docs/latent_ode.md: which one the paper's text makes likelier). Every model is scored on
# the same points by the same function (spiral_readings). Reading (a) needs >= 3 seeds, (b) >= 5; the verdicts
# compare medians, so one bad seed cannot decide them.
READINGS = (
    Reading("a_noisy", "rmse_window_noisy",
            "(a) RMSE over the trajectory's 100 timesteps (all 100 grid points of the observation window, observed "
            "or not), against the noisy points", "median"),
    Reading("a_clean", "rmse_window_clean",
            "(a) RMSE over the trajectory's 100 timesteps (all 100 grid points of the observation window, observed "
            "or not), against the noise-free points", "median"),
    Reading("b_clean", "rmse_extrap_clean",
            "(b) RMSE over the 100 grid points after the observation window, against the noise-free points, on test "
            "spirals whose window and extrapolation lie inside the span the training spirals observe", "median"),
)
# Candidates of a model among which the validation split chooses (per model, n_obs and reading): the RNNs with and
# without scheduled sampling. A run without the column (older records) counts as 0.
VARIANT_KEYS = ("model.feed_prev",)
WITHIN_FACTOR = 1.5  # "is each number within 1.5x of the paper's" (issue 23)
# converged (ndode.report.convergence): over the last 20 % of training the validation RMSE falls by no more than 2 % of
# its final value, or 2 standard errors, between the window's two halves
FLAT_REL = 0.02
CW, CCW = "#d62728", "#1f77b4"
TRUE, OBS, FIT, EXTRAP = "#9a9a9a", "#222222", "#1f77b4", "#ff7f0e"
MODEL_COLORS = {"rnn": "#2ca02c", "rnn_dt": "#9467bd", "latent_ode": "#d62728"}


def _num(x) -> pd.Series:
    return pd.to_numeric(pd.Series(x), errors="coerce").dropna()


def _with_variants(df: pd.DataFrame) -> pd.DataFrame:
    need = ["budget.name", "model.name", "data.n_obs", "seed"] + [c for r in READINGS for c in (r.test, r.val)]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise KeyError(f"latent_ode runs lack columns {missing}; are these records from experiments/latent_ode.py at "
                       "issue 23 or later (Table 2's readings)?")
    out = df.copy()
    for k in VARIANT_KEYS:
        out[k] = pd.to_numeric(out[k], errors="coerce").fillna(0.0) if k in out else 0.0
    return out


def select_on_validation(df: pd.DataFrame, reading: Reading) -> pd.DataFrame:
    """The runs of the candidate chosen per (budget, model, n_obs) for ``reading``: among the model's variants
    (:data:`VARIANT_KEYS`), the one whose validation value of the reading has the lowest median over seeds (ties: the
    first in sorted order). The test split plays no part in the choice."""
    df = _with_variants(df)
    keep = []
    for _, g in df.groupby(["budget.name", "model.name", "data.n_obs"], sort=False):
        med = g.groupby(list(VARIANT_KEYS))[reading.val].median().dropna()
        if med.empty:
            continue
        best = med.idxmin()
        best = best if isinstance(best, tuple) else (best,)
        mask = pd.Series(True, index=g.index)
        for k, v in zip(VARIANT_KEYS, best):
            mask &= g[k] == v
        keep.append(g[mask])
    return pd.concat(keep) if keep else df.iloc[:0]


def convergence(evals: pd.DataFrame, reading: Reading, rel_tol: float = FLAT_REL) -> pd.DataFrame:
    """Per run: is ``reading``'s validation RMSE flat over the last 20 % of training
    (:func:`~ndode.report.convergence.tail_trend`, tolerance ``rel_tol`` × the final value)?

    ``evals``: one row per evaluation, columns ``run``, ``step`` and the validation reading. Returns ``run``,
    ``drop_rel`` and ``se_rel`` (the drop and its standard error over the final value) and ``flat``.
    """
    t = tail_trend(evals, reading.val)
    t["drop_rel"], t["se_rel"] = t["drop"] / t["last"], t["se"] / t["last"]
    t["flat"] = [is_flat(d, s, rel_tol) for d, s in zip(t["drop_rel"], t["se_rel"])]
    return t[["run", "drop_rel", "se_rel", "flat"]]


def table2(df: pd.DataFrame, evals: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (budget, reading, model, n_obs): the validation-chosen variant's test RMSE over seeds.

    Columns: ``median``, ``min``, ``max``, ``mean``, ``std`` (sample) of the test reading; ``n_seeds``; the
    variant (``model.feed_prev``) and the number of candidates it was chosen from; ``val_median`` (what chose it);
    ``paper`` and ``ratio`` (median / paper) and ``within`` (paper / 1.5 <= median <= 1.5 · paper); ``*_paper_tol``:
    the same test reading from the evaluation at the paper's rtol = atol = 1.5e-8 (latent ODE); from ``evals`` (the
    runs' evaluation records: ``run``, ``step``, validation readings; None: not measured), :func:`convergence` over
    the chosen variant's seeds: ``val_drop_last20`` (the largest relative drop), ``flat_seeds`` (how many are flat)
    and ``flat`` (all of them); ``wall_time_s_mean``.
    """
    full = _with_variants(df)
    rows = []
    for r in READINGS:
        # every run's check once per reading; each cell reads its seeds' rows
        conv_all = (convergence(evals, r).set_index("run") if evals is not None and r.val in evals
                    else pd.DataFrame(columns=["drop_rel", "flat"]))
        chosen = select_on_validation(full, r)
        for (budget, model, n), g in chosen.groupby(["budget.name", "model.name", "data.n_obs"], sort=False):
            cand = full[(full["budget.name"] == budget) & (full["model.name"] == model) & (full["data.n_obs"] == n)]
            v = _num(g[r.test])
            m, s, k = mean_std(v)
            paper = PAPER_TABLE2.get(model, {}).get(int(n), math.nan)
            med = float(v.median()) if len(v) else math.nan
            tol = _num(g[r.test + "_paper_tol"]) if r.test + "_paper_tol" in g else pd.Series(dtype=float)
            conv = conv_all[conv_all.index.isin(set(g["run"]))] if "run" in g else conv_all.iloc[:0]
            measured = conv["flat"].dropna()
            rows.append(dict(
                budget=budget, reading=r.key, model=model, n_obs=int(n), n_seeds=k, median=med,
                min=float(v.min()) if k else math.nan, max=float(v.max()) if k else math.nan, mean=m, std=s,
                **{key: float(g[key].iloc[0]) for key in VARIANT_KEYS},
                n_candidates=int(cand.groupby(list(VARIANT_KEYS)).ngroups),
                val_median=float(_num(g[r.val]).median()) if len(_num(g[r.val])) else math.nan,
                paper=paper, ratio=med / paper if paper == paper else math.nan,
                within=bool(paper / WITHIN_FACTOR <= med <= paper * WITHIN_FACTOR) if paper == paper and med == med
                else None,
                median_paper_tol=float(tol.median()) if len(tol) else math.nan,
                val_drop_last20=float(conv["drop_rel"].max()) if len(measured) else math.nan,
                flat_seeds=int(measured.astype(bool).sum()) if len(measured) else math.nan,
                flat=bool(measured.astype(bool).all()) if len(measured) == k and k else None,
                wall_time_s_mean=mean_std(g["wall_time_s"])[0] if "wall_time_s" in g else math.nan))
    cols = ["budget", "reading", "model", "n_obs", "n_seeds", "median", "min", "max", "mean", "std", *VARIANT_KEYS,
            "n_candidates", "val_median", "paper", "ratio", "within", "median_paper_tol", "val_drop_last20", "flat_seeds", "flat",
            "wall_time_s_mean"]
    out = pd.DataFrame(rows, columns=cols)
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    rorder = {r.key: i for i, r in enumerate(READINGS)}
    out = out.assign(_r=out["reading"].map(rorder), _o=out["model"].map(lambda m: order.get(m, len(order))))
    return out.sort_values(["budget", "_r", "_o", "n_obs"], kind="stable").drop(columns=["_r", "_o"]).reset_index(
        drop=True)


def verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """Per (budget, reading, n_obs): does the latent ODE beat both RNNs?

    ``beats_median``: its median test RMSE is below both RNNs' medians; ``beats_every_seed``: its worst seed is
    below each RNN's best seed (a verdict another seed cannot overturn within the spread seen). None where a model
    is missing. Rows with ``n_obs`` = "all" answer "at every n" (None if any n is None).
    """
    rows = []
    for (budget, reading), t in table.groupby(["budget", "reading"], sort=False):
        per_n = []
        for n, g in t.groupby("n_obs"):
            r = g.set_index("model")
            have = all(m in r.index and r.loc[m, "median"] == r.loc[m, "median"] for m in ("latent_ode", *RNNS))
            med = bool(all(r.loc["latent_ode", "median"] < r.loc[m, "median"] for m in RNNS)) if have else None
            every = bool(all(r.loc["latent_ode", "max"] < r.loc[m, "min"] for m in RNNS)) if have else None
            per_n.append(dict(budget=budget, reading=reading, n_obs=int(n), beats_median=med, beats_every_seed=every))
        rows += per_n

        def all_of(key):
            vals = [p[key] for p in per_n]
            return None if not vals or any(v is None for v in vals) else all(vals)

        rows.append(dict(budget=budget, reading=reading, n_obs="all", beats_median=all_of("beats_median"),
                         beats_every_seed=all_of("beats_every_seed")))
    return pd.DataFrame(rows, columns=["budget", "reading", "n_obs", "beats_median", "beats_every_seed"])


def _yes(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "not measured"
    return "yes" if bool(v) else "no"


def _spread_cell(r, fmt=".4f") -> str:
    if r["median"] != r["median"]:
        return "–"
    if r["n_seeds"] < 2:
        return format(r["median"], fmt)
    return f"{format(r['median'], fmt)} [{format(r['min'], fmt)}–{format(r['max'], fmt)}]"


def table2_markdown(table: pd.DataFrame, noise_std: float | None = None, commit: str | None = None) -> str:
    """Table 2 per budget: one table per reading (models × n, median [min–max] over seeds, the paper's row beside),
    the verdicts (latent ODE below both RNNs; within 1.5× of the paper), the evaluation at the paper's tolerance,
    the validation choice of the RNN variants and the convergence over the last 20% of training."""
    parts = []
    by_key = {r.key: r for r in READINGS}
    for budget, tb in table.groupby("budget", sort=False):
        v = verdicts(tb)
        noise = f" Observation noise std {noise_std:g}." if noise_std is not None else ""
        at = f" Runs at commit {commit}." if commit else ""
        parts.append(f"### Budget `{budget}`\n\nEvery model is scored by the same function on the same points "
                     "(`ndode.data.spirals.spiral_readings`); each cell is the median over seeds with the range "
                     f"[min–max] of the model's variant chosen on the validation split.{noise}{at} The paper "
                     "(Chen et al. 2018, Table 2, \"Predictive RMSE on test set\") has one RNN row, shown for both RNN "
                     "variants, and does not say which reading or which targets it used.")
        for key, t in tb.groupby("reading", sort=False):
            reading = by_key[key]
            ns = sorted(t["n_obs"].unique())
            seeds = sorted(set(t["n_seeds"]))
            seed_text = str(seeds[0]) if len(seeds) == 1 else f"{min(seeds)}–{max(seeds)}"
            lines = [f"**{reading.title}; median [min–max] over {seed_text} seeds.**", "",
                     "| model | " + " | ".join(f"n = {n}" for n in ns) + " | " + " | ".join(
                         f"paper n = {n}" for n in ns) + " |", "| --- |" + " ---: |" * (2 * len(ns))]
            for model in MODEL_ORDER:
                g = t[t["model"] == model].set_index("n_obs")
                if g.empty:
                    continue
                cells = [_spread_cell(g.loc[n]) if n in g.index else "–" for n in ns]
                paper = [f"{PAPER_TABLE2[model][n]:.4f}" if n in PAPER_TABLE2.get(model, {}) else "–" for n in ns]
                lines.append(f"| {MODEL_LABELS.get(model, model)} | " + " | ".join(cells) + " | " + " | ".join(paper)
                             + " |")
            vr = v[v["reading"] == key].set_index("n_obs")
            said = "; ".join(f"n = {n}: {_yes(vr.loc[n, 'beats_median'])}" for n in ns if n in vr.index)
            every = "; ".join(f"n = {n}: {_yes(vr.loc[n, 'beats_every_seed'])}" for n in ns if n in vr.index)
            lines += ["", f"- Latent ODE below both RNNs (medians): {said}. **At every n: "
                          f"{_yes(vr.loc['all', 'beats_median']) if 'all' in vr.index else 'not measured'}.**",
                      f"- Latent ODE's worst seed below each RNN's best seed: {every}. At every n: "
                      f"{_yes(vr.loc['all', 'beats_every_seed']) if 'all' in vr.index else 'not measured'}.",
                      "- Within 1.5× of the paper's number (paper / 1.5 ≤ median ≤ 1.5 · paper): " + "; ".join(
                          f"{MODEL_LABELS.get(r['model'], r['model'])} n = {r['n_obs']}: {_yes(r['within'])} "
                          f"({r['ratio']:.2f}×)" for _, r in t.iterrows())]
            parts.append("\n".join(lines))
        lat = tb[(tb["model"] == "latent_ode") & tb["median_paper_tol"].notna()]
        if len(lat):
            lines = ["**Latent ODE at the training tolerance and at the paper's rtol = atol = 1.5e-8 (one more test "
                     "solve after training, in float64); medians over seeds.**", "",
                     "| reading | n | training tolerance | 1.5e-8 |", "| --- | ---: | ---: | ---: |"]
            lines += [f"| {r['reading']} | {r['n_obs']} | {r['median']:.4f} | {r['median_paper_tol']:.4f} |"
                      for _, r in lat.iterrows()]
            parts.append("\n".join(lines))
        rnn = tb[tb["model"].isin(RNNS)]
        if len(rnn):
            lines = ["**RNN variants chosen on the validation split** (`model.feed_prev`: scheduled-sampling "
                     "probability; per reading, the candidate with the lowest median validation RMSE).", "",
                     "| reading | model | n | feed_prev chosen | candidates | validation median |",
                     "| --- | --- | ---: | ---: | ---: | ---: |"]
            lines += [f"| {r['reading']} | {MODEL_LABELS[r['model']]} | {r['n_obs']} | {r['model.feed_prev']:g} | "
                      f"{r['n_candidates']} | {r['val_median']:.4f} |" for _, r in rnn.iterrows()]
            parts.append("\n".join(lines))
        conv = tb[tb["reading"].isin(["a_noisy", "b_clean"])]
        lines = [f"**Convergence (`ndode.report.convergence`): over the last {FRACTION:.0%} of training, how much the "
                 "validation reading falls between the window's two halves, relative to its final value (the largest "
                 f"over seeds); a seed is flat when that drop is ≤ {FLAT_REL:g} or ≤ 2 standard errors (a rise is "
                 "flat: no longer improving).**", "",
                 "| reading | model | n | largest drop | flat seeds | flat |", "| --- | --- | ---: | ---: | ---: | --- |"]
        lines += [f"| {r['reading']} | {MODEL_LABELS.get(r['model'], r['model'])} | {r['n_obs']} | "
                  + (f"{r['val_drop_last20']:.3f}" if r['val_drop_last20'] == r['val_drop_last20'] else "–") + " | "
                  + (f"{r['flat_seeds']:.0f}/{r['n_seeds']}" if r['flat_seeds'] == r['flat_seeds'] else "–")
                  + f" | {_yes(r['flat'])} |" for _, r in conv.iterrows()]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def figure8_runs(df: pd.DataFrame, budget: str, n_obs: int = 30) -> dict[str, str]:
    """``{"rnn": run_dir, "latent_ode": run_dir}`` for Figure 8: at ``n_obs``, the lowest seed of the latent ODE and
    of the plain RNN's variant chosen on the validation split for reading (b)."""
    df = _with_variants(df)
    df = df[(df["budget.name"] == budget) & (df["data.n_obs"] == n_obs)]
    out = {}
    for model in ("rnn", "latent_ode"):
        g = select_on_validation(df[df["model.name"] == model], READINGS[-1])
        if len(g):
            out[model] = g.sort_values("seed").iloc[0]["run_dir"]
    return out


# --------------------------------------------------------------------------- figures


def _spiral_panel(ax, a: dict, i: int, title: str) -> None:
    ax.plot(a["clean"][i, :, 0], a["clean"][i, :, 1], "-", color=TRUE, lw=2.5, alpha=0.6, label="true spiral")
    ax.plot(a["fit_x"][i, :, 0], a["fit_x"][i, :, 1], "-", color=FIT, lw=1.3, label="fit (observation window)")
    ax.plot(a["extrap_x"][i, :, 0], a["extrap_x"][i, :, 1], "-", color=EXTRAP, lw=1.3, label="extrapolation")
    ax.plot(a["obs_x"][i, :, 0], a["obs_x"][i, :, 1], ".", color=OBS, ms=4, label="observations")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal", adjustable="datalim")
    ax.tick_params(labelsize=7)


def _pca2(z: np.ndarray) -> np.ndarray:
    flat = z.reshape(-1, z.shape[-1])
    centred = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[:2].T).reshape(*z.shape[:-1], 2)


def plot_fig8(rnn: dict, latent: dict, title: str | None = None) -> Figure:
    """Figure 8: test spirals reconstructed and extrapolated by the RNN (top) and the latent ODE (bottom),
    and the latent trajectories projected to 2-D (PCA), coloured by direction."""
    n = len(latent["clean"])
    fig = Figure(figsize=(3.0 * n + 4.2, 6.4))
    gs = fig.add_gridspec(2, n + 1, width_ratios=[1] * n + [1.35])
    for row, (a, name) in enumerate(((rnn, MODEL_LABELS.get(str(rnn["model"]), "RNN")), (latent, "Latent ODE"))):
        for i in range(n):
            ax = fig.add_subplot(gs[row, i])
            direction = "clockwise" if a["clockwise"][i] else "counter-clockwise"
            _spiral_panel(ax, a, i, f"test spiral {i + 1} ({direction})")
            if i == 0:
                ax.set_ylabel(name, fontsize=11, fontweight="bold")
            if row == 0 and i == 0:
                fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=9,
                           bbox_to_anchor=(0.42, -0.04))
    ax = fig.add_subplot(gs[:, n])
    z = _pca2(latent["latent_z"])
    for k in range(len(z)):
        cw = bool(latent["latent_clockwise"][k])
        ax.plot(z[k, :, 0], z[k, :, 1], "-", lw=0.7, alpha=0.6, color=CW if cw else CCW,
                label=None if k else None)
        ax.plot(z[k, 0, 0], z[k, 0, 1], "o", ms=2, color=CW if cw else CCW)
    ax.plot([], [], "-", color=CW, label="clockwise")
    ax.plot([], [], "-", color=CCW, label="counter-clockwise")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"Latent trajectories z(t), {len(z)} test spirals\n(first two principal components; dot: z₀)",
                 fontsize=9)
    ax.tick_params(labelsize=7)
    fig.suptitle(title or f"Reconstruction and extrapolation from {int(latent['n_obs'])} irregular observations "
                 "(the paper's Figure 8)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_fig9(latent: dict, title: str | None = None) -> Figure:
    """Figure 9: decoded trajectories while one latent dimension of z₀ varies (the others fixed)."""
    import matplotlib

    x, vals, dim = latent["vary_x"], latent["vary_values"], int(latent["vary_dim"])
    w = int(latent["n_window"])
    cmap = matplotlib.colormaps["coolwarm"]
    fig = Figure(figsize=(11, 4.6))
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    ax = axes[0]
    lo, hi = float(vals.min()), float(vals.max())
    for k in range(len(vals)):
        c = cmap((vals[k] - lo) / (hi - lo) if hi > lo else 0.5)
        ax.plot(x[k, :w, 0], x[k, :w, 1], "-", color=c, lw=1.6)
        ax.plot(x[k, w:, 0], x[k, w:, 1], ":", color=c, lw=1.2)
        ax.plot(x[k, 0, 0], x[k, 0, 1], "o", color=c, ms=4)
    sm = matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(lo, hi))
    fig.colorbar(sm, ax=ax, label=f"z₀[{dim}]")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set(xlabel="x₁", ylabel="x₂",
           title=f"Decoded x(t) as z₀[{dim}] varies (dot: t = 0; solid: window, dotted: beyond)")
    ax = axes[1]
    sep = latent["vary_separation"]
    ax.bar(np.arange(len(sep)), sep, color=["#444444" if i != dim else CW for i in range(len(sep))])
    ax.set(xlabel="latent dimension", ylabel="|mean(cw) − mean(ccw)| / std",
           title="How well each z₀ dimension separates\nthe directions (validation spirals)")
    ax.set_xticks(np.arange(len(sep)))
    fig.suptitle(title or "Varying one dimension of the latent initial state (the paper's Figure 9)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_learning_curves(evals: pd.DataFrame, steps: int, title: str | None = None) -> Figure:
    """Validation RMSE against training iteration, readings (a) against noisy points and (b), one column per n_obs:
    per model and variant, the median over seeds (line) and their range (band). For each reading a row over the
    whole run (log scale) and a row over its last 30 % (linear), the last 20 %, where Table 2 asks the curve to be
    flat (``ndode.report.convergence``), shaded in both.

    ``evals``: one row per evaluation of a run, columns ``model``, ``n_obs``, ``model.feed_prev``, ``seed``,
    ``step`` and the validation readings (``val_rmse_window_noisy``, ``val_rmse_extrap_clean``).
    """
    rows = [(r, zoom) for r in READINGS if r.key in ("a_noisy", "b_clean") for zoom in (False, True)]
    ns = sorted(evals["n_obs"].unique())
    fig = Figure(figsize=(4.2 * len(ns), 3.0 * len(rows)))
    axes = fig.subplots(len(rows), len(ns), squeeze=False)
    for i, (reading, zoom) in enumerate(rows):
        for j, n in enumerate(ns):
            ax = axes[i, j]
            ax.axvspan((1 - FRACTION) * steps, steps, color="#eeeeee", zorder=0)
            sub = evals[evals["n_obs"] == n]
            if zoom:
                sub = sub[sub["step"] >= (1 - 1.5 * FRACTION) * steps]
            for (model, fp), g in sub.groupby(["model", "model.feed_prev"], sort=False):
                curve = g.groupby("step")[reading.val].agg(["median", "min", "max"]).sort_index()
                color = MODEL_COLORS.get(model, "#444444")
                label = MODEL_LABELS.get(model, model) + (f", feed_prev {fp:g}" if model in RNNS else "")
                ax.plot(curve.index, curve["median"], "-" if fp == 0 else "--", color=color, lw=1.3, label=label)
                ax.fill_between(curve.index, curve["min"], curve["max"], color=color, alpha=0.15, lw=0)
            if not zoom:
                ax.set_yscale("log")
            ax.set_title(f"n = {n}: reading {reading.key}" + (", last 30 %" if zoom else ""), fontsize=9)
            ax.set_xlabel("iteration", fontsize=8)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel("validation RMSE", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title or "Learning curves: validation RMSE (median over seeds, band: range); shaded: the last 20% "
                 "of training", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


# --------------------------------------------------------------------------- Poisson-process observation times (§5.1)

# per run; the homogeneous and true-rate columns depend on the data only (the same in every run)
POISSON_METRICS = ("test_event_ll", "test_homogeneous_ll", "test_true_ll", "test_event_ll_future",
                   "test_homogeneous_ll_future", "test_true_ll_future", "test_rate_rel_l2",
                   "test_homogeneous_rate_rel_l2", "test_rate_rel_l2_future", "test_homogeneous_rate_rel_l2_future",
                   "test_rmse_extrap_clean", "val_rmse_extrap_clean", "val_event_ll", "homogeneous_rate", "wall_time_s")


def poisson_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (budget, Poisson term on/off): mean and sample std over seeds of :data:`POISSON_METRICS`."""
    need = ["budget.name", "model.poisson", "seed", "test_rmse_extrap_clean"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise KeyError(f"latent_poisson runs lack columns {missing}; are these records of "
                       "experiments/latent_ode.py --config-name latent_poisson?")
    df = df.assign(**{m: df[m] if m in df.columns else math.nan for m in POISSON_METRICS})
    df = df.assign(poisson=df["model.poisson"].astype(bool), budget=df["budget.name"])
    out = seed_table(df, ["budget", "poisson"], POISSON_METRICS)
    return out.sort_values(["budget", "poisson"], ascending=[True, False], kind="stable").reset_index(drop=True)


def poisson_claims(row) -> dict[str, bool | None]:
    """Does the learned rate beat the homogeneous baseline (log-likelihood on the test events, in the window and
    after it; the rate's relative L2 error)? ``row``: the Poisson-term-on row of :func:`poisson_table`."""
    def beats(a, b, higher=True):
        a, b = row[a], row[b]
        return None if a != a or b != b else bool(a > b if higher else a < b)

    return {"window log-likelihood": beats("test_event_ll_mean", "test_homogeneous_ll_mean"),
            "forecast log-likelihood": beats("test_event_ll_future_mean", "test_homogeneous_ll_future_mean"),
            "rate error": beats("test_rate_rel_l2_mean", "test_homogeneous_rate_rel_l2_mean", higher=False)}


def _pm(r, key, fmt=".2f") -> str:
    return mean_std_cell(r.get(f"{key}_mean"), r.get(f"{key}_std"), fmt)


def _fixed(r, key, fmt=".2f") -> str:  # a number that does not depend on the run: its mean, no spread
    return mean_std_cell(r.get(f"{key}_mean"), None, fmt)


def poisson_markdown(table: pd.DataFrame, rate: str | None = None, window: str | None = None) -> str:
    """The Poisson-process table per budget: the learned rate against a homogeneous Poisson process fitted to the
    training events and against the true rate; then the predictive RMSE with the Poisson term on and off."""
    parts = []
    for budget, t in table.groupby("budget", sort=False):
        on, off = t[t["poisson"]], t[~t["poisson"]]
        r = on.iloc[0].to_dict() if len(on) else {}
        n = int(r.get("n_seeds", 0))
        head = (f"**Poisson term on: the learned rate λ(z(t)) on the test sequences; mean ± std over {n} seeds; "
                f"budget `{budget}`.** The homogeneous baseline is one rate for every sequence and time, the maximum-"
                f"likelihood fit to the training events ({_fixed(r, 'homogeneous_rate')} per time unit); the true "
                "rate is the one the times were drawn from. Neither depends on the run, so they carry no spread.")
        if rate:
            head += f" True rate: {rate}."
        lines = [head, "",
                 "| test sequences | learned rate | homogeneous Poisson | true rate |", "| --- | ---: | ---: | ---: |"]
        if r:
            lines += [
                "| log-likelihood of the event times in the observation window, nats per sequence "
                "(the encoder reads them) | " + " | ".join(
                    [_pm(r, "test_event_ll"), _fixed(r, "test_homogeneous_ll"), _fixed(r, "test_true_ll")]) + " |",
                "| log-likelihood of the later events, nats per sequence (a forecast: the encoder never sees them) | "
                + " | ".join([_pm(r, "test_event_ll_future"), _fixed(r, "test_homogeneous_ll_future"),
                              _fixed(r, "test_true_ll_future")]) + " |",
                "| relative L2 error of the rate, observation window | " + " | ".join(
                    [_pm(r, "test_rate_rel_l2", ".3f"), _fixed(r, "test_homogeneous_rate_rel_l2", ".3f"), "0"]) + " |",
                "| relative L2 error of the rate, after the window | " + " | ".join(
                    [_pm(r, "test_rate_rel_l2_future", ".3f"), _fixed(r, "test_homogeneous_rate_rel_l2_future", ".3f"),
                     "0"]) + " |"]
        parts.append("\n".join(lines))
        rows = [("on", on), ("off", off)]
        lines = [f"**Predictive RMSE over the {window or 'extrapolation'} points after the observation window, against "
                 f"the noise-free spirals (as Table 2); mean ± std over seeds; budget `{budget}`.** Same data, "
                 "recognition network, dynamics and decoder; only the Poisson term differs.", "",
                 "| Poisson term | test RMSE | validation RMSE | seeds |", "| --- | ---: | ---: | ---: |"]
        for label, g in rows:
            if len(g):
                q = g.iloc[0].to_dict()
                lines.append(f"| {label} | {_pm(q, 'test_rmse_extrap_clean', '.4f')} | "
                             f"{_pm(q, 'val_rmse_extrap_clean', '.4f')} | {int(q['n_seeds'])} |")
        parts.append("\n".join(lines))
        if r:
            said = "; ".join(f"{k}: {'yes' if v else 'no' if v is not None else 'not measured'}"
                             for k, v in poisson_claims(r).items())
            parts.append(f"The learned rate beats the homogeneous baseline (means over seeds) — {said}.")
    return "\n\n".join(parts) + "\n"


def plot_fig7(a: dict, title: str | None = None) -> Figure:
    """Figure 7: for a few test sequences, the event times, the learned rate λ(z(t)) and the true rate (top);
    the spiral, its observations and the model's reconstruction and extrapolation (bottom)."""
    n = len(a["times"])
    t, tw = a["t"], float(a["t_window"])
    w = int(np.searchsorted(t, tw, side="right"))
    fig = Figure(figsize=(3.4 * n, 6.6))
    axes = fig.subplots(2, n, squeeze=False, gridspec_kw={"height_ratios": [1, 1.25]})
    for i in range(n):
        ax = axes[0, i]
        ev = a["times"][i, : int(a["lengths"][i])]
        fut = a["future_times"][i, : int(a["future_lengths"][i])]
        ax.plot(t, a["true_rate"][i], "-", color=TRUE, lw=2.5, alpha=0.7, label="true rate")
        if "rate" in a:
            ax.plot(t, a["rate"][i], "-", color=FIT, lw=1.4, label="learned λ(z(t))")
        ax.axhline(float(a["homogeneous_rate"]), color=EXTRAP, ls=":", lw=1.2, label="homogeneous fit")
        top = max(float(np.max(a["true_rate"][i])), float(np.max(a["rate"][i])) if "rate" in a else 0.0)
        ax.plot(ev, np.full(len(ev), -0.04 * top), "o", color=OBS, ms=2.5, label="observed events")
        ax.plot(fut, np.full(len(fut), -0.04 * top), "o", color=TRUE, ms=2.5, alpha=0.7, label="later events (held out)")
        ax.axvline(tw, color=TRUE, ls="--", lw=0.8)
        direction = "clockwise" if a["clockwise"][i] else "counter-clockwise"
        ax.set_title(f"test sequence {i + 1} ({direction})\n{len(ev)} observed, {len(fut)} later events", fontsize=9)
        ax.set_xlabel("t", fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.set_ylabel("rate (events per unit time)", fontsize=9)
            fig.legend(*ax.get_legend_handles_labels(), loc="upper center", ncol=5, fontsize=8,
                       bbox_to_anchor=(0.5, 0.0))
        ax = axes[1, i]
        clean, pred, obs = a["clean"][i], a["x_pred"][i], a["obs_x"][i, : int(a["lengths"][i])]
        ax.plot(clean[:, 0], clean[:, 1], "-", color=TRUE, lw=2.5, alpha=0.6)
        ax.plot(pred[:w, 0], pred[:w, 1], "-", color=FIT, lw=1.3, label="reconstruction")
        ax.plot(pred[w - 1:, 0], pred[w - 1:, 1], "-", color=EXTRAP, lw=1.3, label="extrapolation")
        ax.plot(obs[:, 0], obs[:, 1], ".", color=OBS, ms=3)
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title or "Observation times as a Poisson process with a learned rate (the paper's Figure 7); "
                 "dashed line: end of the observation window", fontsize=11)
    fig.tight_layout()
    return fig

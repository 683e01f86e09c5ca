"""The latent-ODE experiment's Table 2 and Figures 8 and 9, as pure functions of run records.

No training code is imported: the inputs are the collector's DataFrame
(``load_runs``) and the arrays each run saves (``arrays/spirals.npz``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["PAPER_TABLE2", "MODEL_ORDER", "N_OBS", "table2", "table2_markdown", "plot_fig8", "plot_fig9"]

MODEL_ORDER = ("rnn", "rnn_dt", "latent_ode")
MODEL_LABELS = {"rnn": "RNN", "rnn_dt": "RNN + time gaps", "latent_ode": "Latent ODE"}
N_OBS = (30, 50, 100)
# Chen et al. (2018), Table 2: predictive RMSE on the test set. The paper has one RNN row; it serves both RNN variants.
PAPER_TABLE2 = {
    "rnn": {30: 0.3937, 50: 0.3202, 100: 0.1813},
    "rnn_dt": {30: 0.3937, 50: 0.3202, 100: 0.1813},
    "latent_ode": {30: 0.1642, 50: 0.1502, 100: 0.1346},
}
CW, CCW = "#d62728", "#1f77b4"
TRUE, OBS, FIT, EXTRAP = "#9a9a9a", "#222222", "#1f77b4", "#ff7f0e"


def _mean_std(x) -> tuple[float, float, int]:
    v = pd.to_numeric(pd.Series(x), errors="coerce").dropna()
    if not len(v):
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, int(len(v))


def table2(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (budget, model, n_obs): test RMSE over the extrapolation points, mean and sample std over seeds.

    ``rmse_*``: against the noise-free spirals; ``rmse_noisy_*``: against the
    noisy ones; ``val_rmse_mean``: the validation split's (what choices were
    made on); ``paper_rmse``: the paper's Table 2.
    """
    need = ["budget.name", "model.name", "data.n_obs", "seed", "test_rmse", "test_rmse_noisy", "val_rmse"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise KeyError(f"latent_ode runs lack columns {missing}; are these records from experiments/latent_ode.py?")
    rows = []
    for (budget, model, n), g in df.groupby(["budget.name", "model.name", "data.n_obs"], sort=False):
        m, s, k = _mean_std(g["test_rmse"])
        mn, sn, _ = _mean_std(g["test_rmse_noisy"])
        mv, _, _ = _mean_std(g["val_rmse"])
        mt, _, _ = _mean_std(g["wall_time_s"]) if "wall_time_s" in g else (math.nan,) * 3
        rows.append(dict(budget=budget, model=model, n_obs=int(n), rmse_mean=m, rmse_std=s, n_seeds=k,
                         paper_rmse=PAPER_TABLE2.get(model, {}).get(int(n), math.nan),
                         rmse_noisy_mean=mn, rmse_noisy_std=sn, val_rmse_mean=mv, wall_time_s_mean=mt))
    out = pd.DataFrame(rows, columns=["budget", "model", "n_obs", "rmse_mean", "rmse_std", "n_seeds", "paper_rmse",
                                      "rmse_noisy_mean", "rmse_noisy_std", "val_rmse_mean", "wall_time_s_mean"])
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    out = out.assign(_o=out["model"].map(lambda m: order.get(m, len(order))))
    return out.sort_values(["budget", "_o", "n_obs"], kind="stable").drop(columns="_o").reset_index(drop=True)


def claim_holds(table: pd.DataFrame) -> dict[int, bool | None]:
    """The paper's claim per n_obs: the latent ODE's mean RMSE is below both RNNs' (None: a model is missing)."""
    out = {}
    for n, g in table.groupby("n_obs"):
        r = dict(zip(g["model"], g["rmse_mean"]))
        out[int(n)] = (r["latent_ode"] < min(r["rnn"], r["rnn_dt"])
                       if all(k in r and r[k] == r[k] for k in MODEL_ORDER) else None)
    return out


def _cell(m, s) -> str:
    if m != m:
        return "–"
    return f"{m:.4f}" + (f" ± {s:.4f}" if s == s else "")


def table2_markdown(table: pd.DataFrame, noise_std: float | None = None) -> str:
    """Table 2 as the paper lays it out (models × observation counts), measured beside the paper, per budget."""
    parts = []
    for budget, t in table.groupby("budget", sort=False):
        ns = sorted(t["n_obs"].unique())
        seeds = sorted(set(t["n_seeds"]))
        seed_text = str(seeds[0]) if len(seeds) == 1 else f"{min(seeds)}–{max(seeds)}"
        noise = f" (observation noise std {noise_std:g})" if noise_std is not None else ""
        for key, what in (("rmse", "against the noise-free spirals"), ("rmse_noisy", f"against the noisy spirals{noise}")):
            lines = [f"**Predictive RMSE on the test set, over the 100 extrapolation points only, {what}; "
                     f"mean ± std over {seed_text} seeds; budget `{budget}`.** Paper: Chen et al. (2018), Table 2 "
                     "(one RNN row, shown for both RNN variants; the paper does not say which targets it used).", "",
                     "| model | " + " | ".join(f"n = {n}" for n in ns) + " | " + " | ".join(f"paper n = {n}" for n in ns)
                     + " |", "| --- |" + " ---: |" * (2 * len(ns))]
            for model in MODEL_ORDER:
                g = t[t["model"] == model].set_index("n_obs")
                if g.empty:
                    continue
                cells = [_cell(g.loc[n, f"{key}_mean"], g.loc[n, f"{key}_std"]) if n in g.index else "–" for n in ns]
                paper = [f"{PAPER_TABLE2[model][n]:.4f}" if n in PAPER_TABLE2.get(model, {}) else "–" for n in ns]
                lines.append(f"| {MODEL_LABELS.get(model, model)} | " + " | ".join(cells) + " | " + " | ".join(paper) + " |")
            parts.append("\n".join(lines))
        verdict = claim_holds(t)
        said = "; ".join(f"n = {n}: {'yes' if v else 'no' if v is not None else 'not measured'}"
                         for n, v in sorted(verdict.items()))
        parts.append(f"The paper's claim, latent ODE RMSE below both RNNs' at every n (noise-free targets): {said}.")
    return "\n\n".join(parts) + "\n"


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

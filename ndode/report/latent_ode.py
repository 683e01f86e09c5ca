"""The latent-ODE experiment's Table 2 and Figures 8 and 9, and the Poisson-process variant's table and
Figure 7, as pure functions of run records.

No training code is imported: the inputs are the collector's DataFrame
(``load_runs``) and the arrays each run saves (``arrays/spirals.npz``,
``arrays/poisson.npz``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .tables import mean_std_cell, seed_table

__all__ = ["PAPER_TABLE2", "MODEL_ORDER", "N_OBS", "table2", "table2_markdown", "plot_fig8", "plot_fig9",
           "POISSON_METRICS", "poisson_table", "poisson_markdown", "plot_fig7"]

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
                cells = [mean_std_cell(g.loc[n, f"{key}_mean"], g.loc[n, f"{key}_std"], ".4f") if n in g.index else "–"
                         for n in ns]
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


# --------------------------------------------------------------------------- Poisson-process observation times (§5.1)

# per run; the homogeneous and true-rate columns depend on the data only (the same in every run)
POISSON_METRICS = ("test_event_ll", "test_homogeneous_ll", "test_true_ll", "test_event_ll_future",
                   "test_homogeneous_ll_future", "test_true_ll_future", "test_rate_rel_l2",
                   "test_homogeneous_rate_rel_l2", "test_rate_rel_l2_future", "test_homogeneous_rate_rel_l2_future",
                   "test_rmse", "val_rmse", "val_event_ll", "homogeneous_rate", "wall_time_s")


def poisson_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (budget, Poisson term on/off): mean and sample std over seeds of :data:`POISSON_METRICS`."""
    need = ["budget.name", "model.poisson", "seed", "test_rmse"]
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
                lines.append(f"| {label} | {_pm(q, 'test_rmse', '.4f')} | {_pm(q, 'val_rmse', '.4f')} | "
                             f"{int(q['n_seeds'])} |")
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

"""The CNF experiment's tables and figures (paper Figures 4 and 5, FFJORD toys), as pure functions.

Inputs are the collector's DataFrame (``load_runs``), each run's ``arrays/cnf.npz`` and its
``metrics.jsonl`` records; no training code is imported. Statistics: mean ± sample std (ddof=1) over seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .tables import mean_std_cell

__all__ = ["TARGETS_SHOWN", "fig4_table", "fig5_table", "toy_table", "claims", "fig4_markdown", "fig5_markdown",
           "toy_markdown", "plot_fig4", "plot_fig5", "plot_toy"]

FIG5_DATA = ("circles", "moons")
TOY_DATA = ("8gaussians", "checkerboard", "pinwheel", "2spirals", "rings")
TARGETS_SHOWN = ("U1", "U3", "U4")  # the paper does not name its three targets; docs/cnf.md says why these
MODEL_LABELS = {"planar": "Planar flow", "cnf": "CNF"}
DATA_LABELS = {"circles": "Two Circles", "moons": "Two Moons"}


def _require(df: pd.DataFrame, cols, what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"{what}: the runs lack columns {missing}; are these records from experiments/cnf.py?")


def _agg(df: pd.DataFrame, by: list[str], metric: str, name: str) -> pd.DataFrame:
    rows = []
    for key, g in df.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        x = pd.to_numeric(g[metric], errors="coerce").dropna()
        rows.append({**dict(zip(by, key)), f"{name}_mean": float(x.mean()) if len(x) else math.nan,
                     f"{name}_std": float(x.std(ddof=1)) if len(x) > 1 else math.nan, "n_seeds": int(len(x))})
    return pd.DataFrame(rows, columns=by + [f"{name}_mean", f"{name}_std", "n_seeds"])


def fig4_table(df: pd.DataFrame) -> pd.DataFrame:
    """Figure 4: one row per (target, model, size): ``kl_mean``, ``kl_std``, ``n_seeds``."""
    _require(df, ["data", "flow", "size", "kl", "seed", "task"], "fig4_table")
    part = df[(df["task"] == "density") & df["flow"].isin(["planar", "cnf"])]
    t = _agg(part.rename(columns={"data": "target", "flow": "model"}), ["target", "model", "size"], "kl", "kl")
    order = {"planar": 0, "cnf": 1}
    t = t.assign(_o=t["model"].map(order)).sort_values(["target", "_o", "size"]).drop(columns="_o")
    return t.astype({"size": int, "n_seeds": int}).reset_index(drop=True)


def fig5_table(df: pd.DataFrame) -> pd.DataFrame:
    """Figure 5: one row per (dataset, model): test NLL in nats, ``nll_mean``, ``nll_std``, ``n_seeds``."""
    _require(df, ["data", "flow", "nll_test", "seed"], "fig5_table")
    part = df[df["data"].isin(FIG5_DATA) & df["flow"].isin(["planar", "cnf"])]
    t = _agg(part.rename(columns={"data": "dataset", "flow": "model"}), ["dataset", "model"], "nll_test", "nll")
    return t.reset_index(drop=True)


def toy_table(df: pd.DataFrame) -> pd.DataFrame:
    """FFJORD toys: test NLL (exact trace) and the mean NFE per training iteration, forward and backward."""
    _require(df, ["data", "flow", "nll_test", "seed", "nfe_forward", "nfe_backward"], "toy_table")
    part = df[df["flow"] == "ffjord"].rename(columns={"data": "dataset"})
    t = _agg(part, ["dataset"], "nll_test", "nll")
    for col in ("nfe_forward", "nfe_backward", "nfe_forward_last", "nfe_backward_last", "wall_time_s"):
        if col in part:
            t[col] = t["dataset"].map(part.groupby("dataset")[col].mean())
    order = {n: i for i, n in enumerate(TOY_DATA)}
    return t.assign(_o=t["dataset"].map(order)).sort_values("_o").drop(columns="_o").reset_index(drop=True)


def claims(fig4: pd.DataFrame, fig5: pd.DataFrame, size: int = 32) -> pd.DataFrame:
    """The paper's claims, measured: CNF KL < planar KL at K = M = ``size`` per target; CNF NLL < planar on moons."""
    rows = []
    for target, g in fig4.groupby("target"):
        p = g[(g["model"] == "planar") & (g["size"] == size)]["kl_mean"]
        c = g[(g["model"] == "cnf") & (g["size"] == size)]["kl_mean"]
        if len(p) and len(c):
            rows.append({"claim": f"{target}: CNF KL < planar KL at K = M = {size}", "planar": float(p.iloc[0]),
                         "cnf": float(c.iloc[0]), "holds": bool(c.iloc[0] < p.iloc[0])})
    for ds in FIG5_DATA:
        g = fig5[fig5["dataset"] == ds]
        p, c = g[g["model"] == "planar"]["nll_mean"], g[g["model"] == "cnf"]["nll_mean"]
        if len(p) and len(c):
            rows.append({"claim": f"{DATA_LABELS[ds]}: CNF test NLL < planar test NLL" + ("" if ds == "moons"
                         else " (not claimed by the paper)"), "planar": float(p.iloc[0]), "cnf": float(c.iloc[0]),
                         "holds": bool(c.iloc[0] < p.iloc[0])})
    return pd.DataFrame(rows, columns=["claim", "planar", "cnf", "holds"])


def _claims_md(c: pd.DataFrame) -> str:
    lines = ["| claim | planar | CNF | holds |", "| --- | ---: | ---: | --- |"]
    lines += [f"| {r.claim} | {r.planar:.3f} | {r.cnf:.3f} | {'yes' if r.holds else '**no**'} |"
              for r in c.itertuples()]
    return "\n".join(lines) + "\n"


def fig4_markdown(t: pd.DataFrame, c: pd.DataFrame, budget: str, kl_samples, steps: dict) -> str:
    n = sorted(set(t["n_seeds"]))
    head = (f"**Figure 4 (density matching): KL(q‖p) − log Z in nats, budget={budget}, mean ± std over "
            f"{'/'.join(map(str, n))} seed(s)**\n\n")
    sizes = sorted(set(t["size"]))
    cols = ["target"] + [f"planar K={k}" for k in sizes] + [f"CNF M={m}" for m in sizes]
    lines = ["| " + " | ".join(cols) + " |", "| --- |" + " ---: |" * (len(cols) - 1)]
    for target, g in t.groupby("target"):
        cells = [target]
        for model in ("planar", "cnf"):
            for k in sizes:
                r = g[(g["model"] == model) & (g["size"] == k)]
                cells.append(mean_std_cell(r["kl_mean"].iloc[0], r["kl_std"].iloc[0], ".3f") if len(r) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nKL is estimated up to the target's unknown log-normaliser, E_q[log q(x) + U(x)], from {kl_samples} "
            f"samples of q per run (lower is better; the same offset log Z for every model on a target). "
            f"Training iterations: {', '.join(f'{k} {v}' for k, v in steps.items())}.\n\n"
            "The paper's claim at K = M = 32, measured:\n\n")
    return head + "\n".join(lines) + "\n" + note + _claims_md(c[c["claim"].str.contains("KL")])


def fig5_markdown(t: pd.DataFrame, c: pd.DataFrame, budget: str, test_size, steps: dict) -> str:
    n = sorted(set(t["n_seeds"]))
    lines = [f"**Figure 5 (maximum likelihood): test NLL in nats, budget={budget}, mean ± std over "
             f"{'/'.join(map(str, n))} seeds**", "", "| dataset | planar flow (K=64) | CNF (M=64) |",
             "| --- | ---: | ---: |"]
    for ds, g in t.groupby("dataset"):
        cells = [DATA_LABELS.get(ds, ds)]
        for model in ("planar", "cnf"):
            r = g[g["model"] == model]
            cells.append(mean_std_cell(r["nll_mean"].iloc[0], r["nll_std"].iloc[0], ".3f") if len(r) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nNLL on a fixed held-out sample of {test_size} points (the same for every run), exact trace for the "
            f"CNF. Training iterations: {', '.join(f'{k} {v}' for k, v in steps.items())}.\n\n")
    return "\n".join(lines) + "\n" + note + _claims_md(c[c["claim"].str.contains("NLL")])


def toy_markdown(t: pd.DataFrame, budget: str, test_size, steps) -> str:
    n = sorted(set(t["n_seeds"]))
    lines = [f"**FFJORD toy densities (FFJORD-style CNF, Hutchinson training): test NLL in nats, budget={budget}, "
             f"mean ± std over {'/'.join(map(str, n))} seed(s)**", "",
             "| dataset | test NLL | NFE-F / iter | NFE-B / iter | NFE-F, NFE-B at the end | time (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in t.itertuples():
        lines.append(f"| {r.dataset} | {mean_std_cell(r.nll_mean, r.nll_std, '.3f')} | {r.nfe_forward:.1f} | "
                     f"{r.nfe_backward:.1f} | {r.nfe_forward_last:.0f}, {r.nfe_backward_last:.0f} | {r.wall_time_s:.0f} |")
    note = (f"\nNLL on a fixed held-out sample of {test_size} points with the exact trace; NFE per training iteration "
            f"averaged over all {steps} iterations and over the last logging interval. No published toy NLLs exist "
            "to compare with (FFJORD reports none).\n")
    return "\n".join(lines) + "\n" + note


def _density(ax, logq: np.ndarray, axis: np.ndarray, title: str = "") -> None:
    p = np.exp(logq - np.nanmax(logq))
    ax.imshow(p, origin="lower", extent=(axis[0], axis[-1], axis[0], axis[-1]), cmap="inferno", aspect="equal",
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def _scatter(ax, x: np.ndarray, axis: np.ndarray, title: str = "", color="#1f77b4") -> None:
    ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.5, color=color, linewidths=0)
    ax.set(xlim=(axis[0], axis[-1]), ylim=(axis[0], axis[-1]), aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def plot_fig4(arrays: dict, table: pd.DataFrame, title: str = "") -> Figure:
    """Per target: the target density, planar densities for each K, CNF densities for each M, and final KL vs size.

    ``arrays[(target, model, size)]`` holds a run's ``axis``, ``logq``, ``log_target``.
    """
    targets = sorted({k[0] for k in arrays})
    sizes = sorted({k[2] for k in arrays})
    ncol = 2 + 2 * len(sizes)
    fig = Figure(figsize=(1.9 * ncol, 2.0 * len(targets) + 0.6))
    axes = np.asarray(fig.subplots(len(targets), ncol, squeeze=False))
    for i, target in enumerate(targets):
        any_run = next(a for k, a in arrays.items() if k[0] == target)
        _density(axes[i, 0], any_run["log_target"], any_run["axis"], f"{target}: target" if i == 0 else target)
        for j, model in enumerate(("planar", "cnf")):
            for s_i, s in enumerate(sizes):
                ax = axes[i, 1 + j * len(sizes) + s_i]
                a = arrays.get((target, model, s))
                label = f"{'Planar K' if model == 'planar' else 'CNF M'}={s}"
                if a is None:
                    ax.set_axis_off()
                    continue
                _density(ax, a["logq"], a["axis"], label if i == 0 else "")
        ax = axes[i, -1]
        g = table[table["target"] == target]
        for model, style in (("planar", "o-"), ("cnf", "s-")):
            r = g[g["model"] == model]
            ax.errorbar(r["size"], r["kl_mean"], yerr=r["kl_std"].fillna(0), fmt=style, ms=4, capsize=2,
                        label=MODEL_LABELS[model])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("K (planar) / M (CNF)", fontsize=8)
        ax.set_ylabel("KL − log Z (nats)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.set_title("final loss", fontsize=9)
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_fig5(arrays: dict, title: str = "") -> Figure:
    """Samples and density at 0, 20, ..., 100 % of the flow, for each (dataset, model) in ``arrays``.

    ``arrays[(dataset, model)]`` holds ``axis``, ``fractions``, ``samples`` ``[F, N, 2]``, ``logq`` ``[F, G, G]``
    and ``data``.
    """
    keys = [(d, m) for d in FIG5_DATA for m in ("planar", "cnf") if (d, m) in arrays]
    fr = next(iter(arrays.values()))["fractions"]
    ncol = len(fr) + 1
    fig = Figure(figsize=(1.8 * ncol, 1.85 * 2 * len(keys) + 0.6))
    axes = np.asarray(fig.subplots(2 * len(keys), ncol, squeeze=False))
    for r, (ds, model) in enumerate(keys):
        a = arrays[(ds, model)]
        top, bot = axes[2 * r], axes[2 * r + 1]
        for j, f in enumerate(a["fractions"]):
            head = f"{100 * f:.0f}%" if r == 0 else ""
            _density(top[j], a["logq"][j], a["axis"], head)
            _scatter(bot[j], a["samples"][j], a["axis"], color="#d62728" if model == "planar" else "#1f77b4")
        top[0].set_ylabel(f"{DATA_LABELS[ds]}\n{MODEL_LABELS[model]}\ndensity", fontsize=8)
        bot[0].set_ylabel("samples", fontsize=8)
        _scatter(top[-1], a["data"], a["axis"], "data" if r == 0 else "", color="#222222")
        bot[-1].set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_toy(arrays: dict, records: pd.DataFrame, table: pd.DataFrame, title: str = "") -> Figure:
    """Per toy data set: data samples, the learned density (exact trace), and NFE-F/NFE-B over training.

    ``arrays[name]`` holds ``axis``, ``logq`` ``[1, G, G]``, ``data``; ``records`` the runs' ``kind == "train"``
    metric records with a ``dataset`` column.
    """
    names = [n for n in TOY_DATA if n in arrays]
    fig = Figure(figsize=(2.6 * len(names), 7.6))
    axes = np.asarray(fig.subplots(3, len(names), squeeze=False))
    for j, name in enumerate(names):
        a = arrays[name]
        _scatter(axes[0, j], a["data"], a["axis"], f"{name}: data", color="#222222")
        r = table[table["dataset"] == name]
        nll = f"test NLL {r['nll_mean'].iloc[0]:.2f}" if len(r) else ""
        _density(axes[1, j], a["logq"][-1], a["axis"], f"CNF density ({nll})")
        ax = axes[2, j]
        g = records[records["dataset"] == name]
        if len(g):
            ax.plot(g["step"], g["nfe_forward"], "-", label="NFE-F")
            ax.plot(g["step"], g["nfe_backward"], "--", label="NFE-B")
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if j == 0:
            ax.set_ylabel("NFE per iteration", fontsize=8)
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig

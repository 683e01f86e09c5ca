"""The CNF experiment's tables and figures (paper Figures 4 and 5, FFJORD toys), as pure functions.

Inputs are the collector's DataFrame (``load_runs``), each run's ``arrays/cnf.npz`` and its
``metrics.jsonl`` records; no training code is imported. Statistics: mean ± sample std (ddof=1) over seeds,
by :func:`ndode.report.tables.mean_std` (every table's).

Verdicts (:func:`verdict`, :func:`claims`): each of the paper's claims is ``holds``, ``fails`` or ``tie``, a tie
being a difference within 2 standard errors of the difference of the means (over seeds) or within 0.01 nats
(issue 24). Convergence (:func:`convergence`): a run's training loss is flat over its last 20 %.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .convergence import FRACTION, is_flat, tail_trend
from .tables import mean_std, mean_std_cell

__all__ = ["TARGETS_SHOWN", "SIZES", "TIE_NATS", "fig4_table", "fig5_table", "toy_table", "verdict", "claims",
           "convergence", "cost_table", "fig4_markdown", "fig5_markdown", "toy_markdown", "plot_fig4", "plot_fig5",
           "plot_toy", "plot_curves"]

FIG5_DATA = ("circles", "moons")
TOY_DATA = ("8gaussians", "checkerboard", "pinwheel", "2spirals", "rings")
# The paper does not name its three targets: Rezende & Mohamed's U1 and our confined U3, U4 (docs/cnf.md says why)
TARGETS_SHOWN = ("U1", "U3c", "U4c")
SIZES = (2, 8, 32)  # K = M of the paper's Figure 4
TIE_NATS = 0.01  # a difference below this is a tie whatever the seeds say (issue 24)
FLAT_NATS = 0.01  # convergence: over the last 20 % (FRACTION) the loss falls by no more than this or 2 se
MODEL_LABELS = {"planar": "Planar flow", "cnf": "CNF"}
DATA_LABELS = {"circles": "Two Circles", "moons": "Two Moons"}
FIG4_METRICS = {"kl": "kl", "kl_fwd": "kl_fwd", "mass_out": "mass_out"}
COST = ("steps", "wall_time_s", "nfe_forward", "nfe_backward", "optim", "lr", "budget.momentum",
        "budget.decay_factor", "decay_step", "target_mass_out")


def _require(df: pd.DataFrame, cols, what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"{what}: the runs lack columns {missing}; are these records from experiments/cnf.py?")


def _agg(df: pd.DataFrame, by: list[str], metrics: dict[str, str]) -> pd.DataFrame:
    """Per group of ``by``: ``<name>_mean``, ``<name>_std`` (ddof 1) of each metric column, ``n_seeds``, and the
    first value of each :data:`COST` column present (runs of one cell share their configuration)."""
    rows = []
    for key, g in df.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        n = 0
        for name, col in metrics.items():
            row[f"{name}_mean"], row[f"{name}_std"], k = mean_std(g[col] if col in g else None)
            n = max(n, k)
        row["n_seeds"] = n
        for col in COST:
            if col in g:
                vals = g[col].dropna()
                if col in ("wall_time_s", "nfe_forward", "nfe_backward"):  # these do vary by seed: their mean
                    row[col] = mean_std(vals)[0]
                else:
                    row[col] = vals.iloc[0] if len(vals) else math.nan
        rows.append(row)
    cols = by + [f"{n}_{s}" for n in metrics for s in ("mean", "std")] + ["n_seeds"]
    out = pd.DataFrame(rows)
    return out if len(out) else pd.DataFrame(columns=cols)


def fig4_table(df: pd.DataFrame) -> pd.DataFrame:
    """Figure 4: one row per (target, model, size): true ``KL(q‖p)``, forward ``KL(p‖q)`` on the grid and the mass
    outside the plotted box (each ``_mean``, ``_std``), ``n_seeds``, and the runs' iterations, time, NFE, optimiser."""
    _require(df, ["data", "flow", "size", "kl", "seed", "task"], "fig4_table")
    part = df[(df["task"] == "density") & df["flow"].isin(["planar", "cnf"])]
    t = _agg(part.rename(columns={"data": "target", "flow": "model"}), ["target", "model", "size"], FIG4_METRICS)
    if t.empty:
        return t
    order = {"planar": 0, "cnf": 1}
    t = t.assign(_o=t["model"].map(order)).sort_values(["target", "_o", "size"]).drop(columns="_o")
    return t.astype({"size": int, "n_seeds": int}).reset_index(drop=True)


def fig5_table(df: pd.DataFrame) -> pd.DataFrame:
    """Figure 5: one row per (dataset, model): test NLL in nats, ``nll_mean``, ``nll_std``, ``n_seeds``, and the
    runs' iterations, time, NFE and optimiser."""
    _require(df, ["data", "flow", "nll_test", "seed"], "fig5_table")
    part = df[df["data"].isin(FIG5_DATA) & df["flow"].isin(["planar", "cnf"])]
    t = _agg(part.rename(columns={"data": "dataset", "flow": "model"}), ["dataset", "model"], {"nll": "nll_test"})
    return t.reset_index(drop=True)


def toy_table(df: pd.DataFrame) -> pd.DataFrame:
    """FFJORD toys: test NLL (exact trace) and the mean NFE per training iteration, forward and backward."""
    _require(df, ["data", "flow", "nll_test", "seed", "nfe_forward", "nfe_backward"], "toy_table")
    part = df[df["flow"] == "ffjord"].rename(columns={"data": "dataset"})
    t = _agg(part, ["dataset"], {"nll": "nll_test"})[["dataset", "nll_mean", "nll_std", "n_seeds"]]
    for col in ("nfe_forward", "nfe_backward", "nfe_forward_last", "nfe_backward_last", "wall_time_s"):
        if col in part:
            t[col] = [mean_std(part.loc[part["dataset"] == d, col])[0] for d in t["dataset"]]
    order = {n: i for i, n in enumerate(TOY_DATA)}
    return t.assign(_o=t["dataset"].map(order)).sort_values("_o").drop(columns="_o").reset_index(drop=True)


def verdict(planar_mean: float, planar_std: float, planar_n: int, cnf_mean: float, cnf_std: float, cnf_n: int,
            tol: float = TIE_NATS) -> dict:
    """The claim "the CNF's loss is lower than the planar flow's", judged from the seeds of each.

    ``diff`` = planar − CNF (> 0 favours the claim); ``se`` = √(s²_planar/n_planar + s²_CNF/n_CNF), the standard
    error of that difference (NaN with fewer than 2 seeds on a side: then only ``tol`` can make a tie). ``tie``
    when |diff| ≤ max(2·se, tol), else ``holds`` (diff > 0) or ``fails``."""
    diff = planar_mean - cnf_mean
    se = math.nan
    if planar_n >= 2 and cnf_n >= 2 and np.isfinite(planar_std) and np.isfinite(cnf_std):
        se = math.sqrt(planar_std ** 2 / planar_n + cnf_std ** 2 / cnf_n)
    if not np.isfinite(diff):
        word = "no runs"
    elif abs(diff) <= tol or (np.isfinite(se) and abs(diff) <= 2 * se):
        word = "tie"
    else:
        word = "holds" if diff > 0 else "fails"
    return {"diff": diff, "se": se, "verdict": word}


def claims(fig4: pd.DataFrame, fig5: pd.DataFrame, sizes=SIZES) -> pd.DataFrame:
    """The paper's claims, judged by :func:`verdict`: on each target, CNF KL < planar KL at K = M = each of
    ``sizes`` (the table's true KL(q‖p)); on Two Moons, CNF test NLL < planar (and on Two Circles, not claimed)."""
    rows = []

    def add(claim, p, c, metric):
        if len(p) and len(c):
            p, c = p.iloc[0], c.iloc[0]
            v = verdict(p[f"{metric}_mean"], p[f"{metric}_std"], int(p["n_seeds"]), c[f"{metric}_mean"],
                        c[f"{metric}_std"], int(c["n_seeds"]))
            rows.append({"claim": claim, "planar": float(p[f"{metric}_mean"]), "cnf": float(c[f"{metric}_mean"]),
                         "n_planar": int(p["n_seeds"]), "n_cnf": int(c["n_seeds"]), **v})

    for target, g in fig4.groupby("target", sort=True):
        for size in sizes:
            at = g[g["size"] == size]
            add(f"{target}: CNF KL < planar KL at K = M = {size}", at[at["model"] == "planar"],
                at[at["model"] == "cnf"], "kl")
    for ds in FIG5_DATA:
        g = fig5[fig5["dataset"] == ds]
        add(f"{DATA_LABELS[ds]}: CNF test NLL < planar test NLL" + ("" if ds == "moons" else " (not claimed by the "
            "paper)"), g[g["model"] == "planar"], g[g["model"] == "cnf"], "nll")
    return pd.DataFrame(rows, columns=["claim", "planar", "cnf", "n_planar", "n_cnf", "diff", "se", "verdict"])


def convergence(records: pd.DataFrame, frac: float = FRACTION, tol: float = FLAT_NATS) -> pd.DataFrame:
    """Is each run's training loss flat over its last ``frac`` of iterations (:mod:`ndode.report.convergence`: it
    no longer falls by more than ``tol`` nats or 2 standard errors between the window's two halves)?

    ``records``: the runs' ``kind == "train"`` records, columns ``run``, ``step``, ``loss`` (interval means).
    Returns ``run``, ``drop``, ``se``, ``flat``.
    """
    t = tail_trend(records, "loss", frac)
    t["flat"] = [is_flat(d, s, tol) for d, s in zip(t["drop"], t["se"])]
    return t[["run", "drop", "se", "flat"]]


def cost_table(runs: pd.DataFrame, conv: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (task, model, size): iterations, optimiser, learning rate (and decay), mean time per run, NFE per
    iteration (CNF) and how many runs are flat over their last 20 % (:func:`convergence`)."""
    _require(runs, ["task", "flow", "size", "run"], "cost_table")
    part = runs[runs["flow"].isin(["planar", "cnf"])]
    if conv is not None and len(conv):
        part = part.merge(conv[["run", "flat"]], on="run", how="left")
    rows = []
    for (task, model, size), g in part.groupby(["task", "flow", "size"], sort=True):
        row = {"task": task, "model": model, "size": int(size), "runs": len(g)}
        for col in COST:
            if col in g:
                vals = g[col].dropna()
                row[col] = (mean_std(vals)[0] if col in ("wall_time_s", "nfe_forward", "nfe_backward")
                            else vals.iloc[0]) if len(vals) else math.nan
        flat = g["flat"].dropna() if "flat" in g else pd.Series(dtype=object)
        row["flat"] = int(flat.astype(bool).sum()) if len(flat) else math.nan
        row["checked"] = len(flat)
        rows.append(row)
    return pd.DataFrame(rows)


def _claims_md(c: pd.DataFrame) -> str:
    lines = ["| claim | planar | CNF | planar − CNF | 2 se | seeds (planar, CNF) | verdict |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in c.itertuples():
        se = f"{2 * r.se:.3f}" if np.isfinite(r.se) else "–"
        word = r.verdict if r.verdict == "holds" else f"**{r.verdict}**"
        lines.append(f"| {r.claim} | {r.planar:.3f} | {r.cnf:.3f} | {r.diff:+.3f} | {se} | {r.n_planar}, {r.n_cnf} | "
                     f"{word} |")
    return "\n".join(lines) + "\n"


def _optim_text(r: dict) -> str:
    """``rmsprop 0.0001, momentum 0.9, ×0.1 from it. 7500`` from a cost row."""
    def finite(v):
        return isinstance(v, (int, float, np.number)) and np.isfinite(v)

    lr, mom = r.get("lr"), r.get("budget.momentum")
    text = f"{r.get('optim') or '?'} {format(lr, 'g') if finite(lr) else '?'}"
    # momentum is RMSprop's option (experiments/cnf.py); Adam's runs carry the budget's value but never use it
    text += f", momentum {mom:g}" if finite(mom) and mom and r.get("optim") == "rmsprop" else ""
    f, at = r.get("budget.decay_factor"), r.get("decay_step")
    if finite(f) and f < 1 and finite(at):
        text += f", ×{f:g} from it. {int(at):,}"
    return text


def _cost_md(cost: pd.DataFrame) -> str:
    if cost is None or cost.empty:
        return ""
    lines = ["| model | size | iterations | optimiser, lr | time per run (s) | NFE-F / NFE-B per it. "
             "| flat last 20 % |", "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for _, r in cost.iterrows():
        r = r.to_dict()
        nfe = (f"{r['nfe_forward']:.0f} / {r['nfe_backward']:.0f}" if r["model"] == "cnf" and
               np.isfinite(r.get("nfe_forward", math.nan)) else "–")
        flat = f"{r['flat']:.0f}/{r['checked']}" if r.get("checked") else "–"
        steps = f"{int(r['steps']):,}" if np.isfinite(r.get("steps", math.nan)) else "?"
        wall = f"{r['wall_time_s']:.0f}" if np.isfinite(r.get("wall_time_s", math.nan)) else "?"
        lines.append(f"| {MODEL_LABELS[r['model']]} | {r['size']} | {steps} | {_optim_text(r)} | {wall} | {nfe} | "
                     f"{flat} |")
    return "\n".join(lines) + "\n"


def _grid_md(t: pd.DataFrame, metric: str, fmt: str, scale: float = 1.0) -> list[str]:
    sizes = sorted(set(t["size"]))
    cols = ["target"] + [f"planar K={k}" for k in sizes] + [f"CNF M={m}" for m in sizes]
    lines = ["| " + " | ".join(cols) + " |", "| --- |" + " ---: |" * (len(cols) - 1)]
    for target, g in t.groupby("target"):
        cells = [target]
        for model in ("planar", "cnf"):
            for k in sizes:
                r = g[(g["model"] == model) & (g["size"] == k)]
                ok = len(r) and np.isfinite(r[f"{metric}_mean"].iloc[0])
                cells.append(mean_std_cell(scale * r[f"{metric}_mean"].iloc[0], scale * r[f"{metric}_std"].iloc[0],
                                           fmt) if ok else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _seeds(t) -> str:
    return "/".join(map(str, sorted(set(int(n) for n in t["n_seeds"])))) or "0"


def fig4_markdown(t: pd.DataFrame, c: pd.DataFrame, budget: str, kl_samples, cost: pd.DataFrame | None = None,
                  kl_grid=None) -> str:
    """Figure 4's tables: true KL, forward KL on the grid, mass outside the box, training cost, the verdicts."""
    head = (f"**Figure 4 (density matching): KL(q‖p) in nats, budget={budget}, mean ± std over {_seeds(t)} "
            "seed(s)**\n\n")
    parts = [head + "\n".join(_grid_md(t, "kl", ".3f")) + "\n",
             f"\nKL(q‖p) = E_q[log q + U] + log Z from {kl_samples} samples of q per run, log Z of each target by "
             "quadrature (ndode/data/toy2d.py); ≥ 0, lower is better. U3c and U4c are Rezende & Mohamed's U3 and U4 "
             "with a smooth wall along z₁ (docs/cnf.md): the raw ones are not densities.\n"]
    if "kl_fwd_mean" in t and t["kl_fwd_mean"].notna().any():
        grid = f" ({kl_grid}² nodes on [−6, 6]²)" if kl_grid else ""
        parts.append(f"\n**Forward KL(p‖q) in nats, on the grid{grid}**\n\n" + "\n".join(_grid_md(t, "kl_fwd", ".3f"))
                     + "\n")
    if "mass_out_mean" in t and t["mass_out_mean"].notna().any():
        own = ""
        if "target_mass_out" in t:
            own = "; the target's own: " + ", ".join(
                f"{k} {100 * v:.2f} %" for k, v in t.groupby("target")["target_mass_out"].first().items()
                if np.isfinite(v))
        parts.append(f"\n**Mass of q outside the plotted box [−4, 4]², in %{own}**\n\n"
                     + "\n".join(_grid_md(t, "mass_out", ".2f", 100.0)) + "\n")
    if cost is not None and not cost.empty:
        parts.append("\n**Training: iterations, optimiser, time and NFE per run** (time: wall seconds per run, "
                     "mean over its runs; flat: runs whose training loss falls by ≤ max(0.01 nats, 2 se) over "
                     "their last 20 %)\n\n" + _cost_md(cost[cost["task"] == "density"]))
    parts.append("\n**The paper's claim, judged** (tie: |planar − CNF| ≤ max(2 se, 0.01 nats), se over seeds)\n\n"
                 + _claims_md(c[c["claim"].str.contains("KL")]))
    return "".join(parts)


def fig5_markdown(t: pd.DataFrame, c: pd.DataFrame, budget: str, test_size, cost: pd.DataFrame | None = None) -> str:
    lines = [f"**Figure 5 (maximum likelihood): test NLL in nats, budget={budget}, mean ± std over "
             f"{_seeds(t)} seeds**", "", "| dataset | planar flow (K=64) | CNF (M=64) |", "| --- | ---: | ---: |"]
    for ds, g in t.groupby("dataset"):
        cells = [DATA_LABELS.get(ds, ds)]
        for model in ("planar", "cnf"):
            r = g[g["model"] == model]
            cells.append(mean_std_cell(r["nll_mean"].iloc[0], r["nll_std"].iloc[0], ".3f") if len(r) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nNLL on a fixed held-out sample of {test_size} points (the same for every run; learning rates were "
            "chosen on a separate validation sample), exact trace for the CNF.\n\n")
    if cost is not None and not cost.empty:
        note += ("**Training: iterations, optimiser, time and NFE per run**\n\n"
                 + _cost_md(cost[cost["task"] == "mle"]) + "\n")
    return ("\n".join(lines) + "\n" + note + "**The paper's claim, judged** (tie: |planar − CNF| ≤ max(2 se, 0.01 "
            "nats))\n\n" + _claims_md(c[c["claim"].str.contains("NLL")]))


def toy_markdown(t: pd.DataFrame, budget: str, test_size, steps) -> str:
    lines = [f"**FFJORD toy densities (FFJORD-style CNF, Hutchinson training): test NLL in nats, budget={budget}, "
             f"mean ± std over {_seeds(t)} seed(s)**", "",
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
        ax.set_ylabel("KL(q‖p) (nats)", fontsize=8)
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


def plot_curves(records: pd.DataFrame, rows: list, cols: list, title: str = "",
                ylabel: str = "training loss") -> Figure:
    """Learning curves, one panel per (row, col): each run's training loss (interval means) against the fraction
    of its iterations, planar flows red, CNFs blue, one line per seed; validation evaluations as dots; the last
    20 % (the convergence check's window, :func:`convergence`) shaded.

    ``records`` columns: ``row``, ``col``, ``model``, ``run``, ``kind`` (``train`` | ``eval``), ``step``, ``steps``
    (the run's iterations), ``value``.
    """
    fig = Figure(figsize=(3.3 * len(cols), 2.5 * len(rows) + 0.6))
    axes = np.asarray(fig.subplots(len(rows), len(cols), squeeze=False))
    colors = {"planar": "#d62728", "cnf": "#1f77b4"}
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            ax = axes[i, j]
            g = records[(records["row"] == row) & (records["col"] == col)]
            ax.axvspan(1 - FRACTION, 1.0, color="#bbbbbb", alpha=0.3, lw=0)
            seen = set()
            for (model, _run), r in g.groupby(["model", "run"], sort=True):
                r = r.sort_values("step")
                tr, ev = r[r["kind"] == "train"], r[r["kind"] == "eval"]
                steps = float(r["steps"].iloc[0])
                label = f"{MODEL_LABELS.get(model, model)} ({int(steps):,} it.)" if model not in seen else None
                seen.add(model)
                ax.plot(tr["step"] / steps, tr["value"], "-", lw=0.7, alpha=0.8, color=colors.get(model), label=label)
                ax.plot(ev["step"] / steps, ev["value"], ".", ms=3, color=colors.get(model))
            late = g[(g["kind"] == "train") & (g["step"] > 0.1 * g["steps"])]["value"].astype(float)
            if len(late):  # the converging part, not the first iterations' large losses
                lo, hi = float(late.min()), float(late.quantile(0.98))
                pad = 0.1 * (hi - lo) + 1e-3
                ax.set_ylim(lo - pad, hi + pad)
            ax.set_title(f"{row}, {col}" if col != "" else str(row), fontsize=9)
            ax.set_xlabel("fraction of the run's iterations", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(ylabel, fontsize=8)
            if seen:
                ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig

"""MNIST's Table 1 and Figure 3, as pure functions of the collector's DataFrame and run arrays.

No training code is imported here: the inputs are run records (``load_runs``),
each ODE run's ``arrays/fig3_sweep.csv`` and its ``metrics.jsonl`` records.
"""

from __future__ import annotations

import math

import pandas as pd

from .tables import mean_std, mean_std_cell

__all__ = ["PAPER_TABLE1", "MODEL_ORDER", "model_key", "table1", "table1_markdown", "plot_fig3"]

MODEL_ORDER = ("mlp", "resnet", "rknet", "odenet", "odenet_checkpoint")
MODEL_LABELS = {"mlp": "1-Layer MLP", "resnet": "ResNet", "rknet": "RK-Net", "odenet": "ODE-Net",
                "odenet_checkpoint": "ODE-Net (checkpointed adjoint)"}
# Chen et al. (2018), Table 1: test error (%), parameters (millions), memory and time orders.
# (The MLP row is LeCun et al. 1998's.)
PAPER_TABLE1 = {
    "mlp": {"paper_error_pct": 1.60, "paper_params_m": 0.24, "paper_memory": "-", "paper_time": "-"},
    "resnet": {"paper_error_pct": 0.41, "paper_params_m": 0.60, "paper_memory": "O(L)", "paper_time": "O(L)"},
    "rknet": {"paper_error_pct": 0.47, "paper_params_m": 0.22, "paper_memory": "O(L̃)", "paper_time": "O(L̃)"},
    "odenet": {"paper_error_pct": 0.42, "paper_params_m": 0.22, "paper_memory": "O(1)", "paper_time": "O(L̃)"},
}
MIB = 2**20


def model_key(name: str, adjoint) -> str:
    """Table 1's row of a run: the ODE architecture without an adjoint (``none``; ``false`` in older records)
    is RK-Net; with the checkpointed adjoint (RK-Net's gradients, less memory) it is a row of its own."""
    if name == "odenet" and adjoint is not None and adjoint == adjoint:  # None/NaN: a record without the key
        choice = str(adjoint).lower()
        if choice in ("none", "false"):
            return "rknet"
        if choice == "checkpoint":
            return "odenet_checkpoint"
    return name


def table1(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (budget, model), numbers only: measured values (mean and std over seeds) beside the paper's."""
    need = ["budget.name", "model.name", "seed", "test_error", "params", "saved_bytes", "step_time_s"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise KeyError(f"MNIST runs lack columns {missing}; are these records from experiments/mnist.py?")
    adjoint = df["solver.adjoint"] if "solver.adjoint" in df else pd.Series([None] * len(df), index=df.index)
    keys = [model_key(n, a) for n, a in zip(df["model.name"], adjoint)]
    rows = []
    for (budget, model), g in df.groupby([df["budget.name"], pd.Series(keys, index=df.index, name="model")],
                                         sort=False):
        err, err_sd, n = mean_std(g["test_error"] * 100)
        step, step_sd, _ = mean_std(g["step_time_s"])
        saved = mean_std(g["saved_bytes"])[0]
        grown = mean_std(g.get("saved_bytes_grown"))[0]
        rows.append({
            "budget": budget, "model": model, "label": MODEL_LABELS.get(model, model), "n_seeds": n,
            "epochs": mean_std(g.get("epochs"))[0],
            "test_error_pct_mean": err, "test_error_pct_std": err_sd,
            "params_m": float(g["params"].iloc[0]) / 1e6,
            "saved_mib": saved / MIB, "growth": grown / saved,
            "growth_what": g["growth_what"].iloc[0] if "growth_what" in g else None,
            "memory_nfe": mean_std(g.get("memory_nfe"))[0], "memory_nfe_grown": mean_std(g.get("memory_nfe_grown"))[0],
            "step_time_s_mean": step, "step_time_s_std": step_sd,
            "test_time_per_128_s": mean_std(g.get("test_time_per_128_s"))[0],
            "nfe_forward": mean_std(g.get("train_nfe_forward"))[0],
            "nfe_backward": mean_std(g.get("train_nfe_backward"))[0],
            **{k: v for k, v in PAPER_TABLE1.get(model, {}).items()},
        })
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    order = out["model"].map(lambda m: MODEL_ORDER.index(m) if m in MODEL_ORDER else 99)
    return out.assign(_order=order).sort_values(["budget", "_order"]).drop(columns="_order").reset_index(drop=True)


def _paper(r: dict, key: str) -> str:
    v = r.get(key)
    return v if isinstance(v, str) else "–"  # a row the paper does not have (the checkpointed adjoint)


def table1_markdown(table: pd.DataFrame) -> str:
    """Markdown for :func:`table1`, with a note on what each column measures."""
    cols = ["budget", "model", "seeds", "epochs", "test error", "paper error", "params", "paper params",
            "saved for backward / batch", "growth", "paper memory", "train step", "test / 128 images",
            "NFE-F / NFE-B", "paper time"]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for r in table.to_dict("records"):
        growth = "–"
        if r["growth"] == r["growth"]:
            what = r["growth_what"] + (f": NFE {r['memory_nfe']:.0f}→{r['memory_nfe_grown']:.0f}"
                                       if r["memory_nfe"] == r["memory_nfe"] else "")
            growth = f"×{r['growth']:.2f} ({what})"
        nfe = "–" if r["nfe_forward"] != r["nfe_forward"] else (
            f"{r['nfe_forward']:.1f} / " + ("–" if r["nfe_backward"] != r["nfe_backward"] else f"{r['nfe_backward']:.1f}"))
        cells = [r["budget"], r["label"], r["n_seeds"], f"{r['epochs']:.2f}",
                 mean_std_cell(r["test_error_pct_mean"], r["test_error_pct_std"], ".2f", "%"),
                 mean_std_cell(r.get("paper_error_pct", math.nan), math.nan, ".2f", "%"),
                 f"{r['params_m']:.3f} M", mean_std_cell(r.get("paper_params_m", math.nan), math.nan, ".2f", " M"),
                 f"{r['saved_mib']:.1f} MiB", growth, _paper(r, "paper_memory"),
                 mean_std_cell(r["step_time_s_mean"], r["step_time_s_std"], ".3f", " s"),
                 mean_std_cell(r["test_time_per_128_s"], math.nan, ".3f", " s"), nfe, _paper(r, "paper_time")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    note = (
        "\nMeasured: test error on the MNIST test set (10,000 images; smoke budgets use a subset) after the "
        "budget's schedule, mean ± std over seeds (sample std; none shown for one seed); parameters counted; bytes "
        "autograd saves for backward for one training batch (128 images at the cpu and paper budgets; parameters "
        "excluded), and how they change with depth (ResNet: twice the blocks) or with solver work (RK-Net, "
        "ODE-Net: the trained model at a 100× tighter tolerance, NFE shown) — O(L) and O(L̃) grow, O(1) does not; "
        "median seconds per training step (batch 128, one CPU thread) and per 128 test images; mean NFE per "
        "training batch over the last logging interval (NFE-B: the adjoint's backward solve). Paper columns: "
        "Chen et al. (2018), Table 1.\n")
    return "\n".join(lines) + "\n" + note


def plot_fig3(sweep: pd.DataFrame, train: pd.DataFrame, title: str = ""):
    """The paper's Figure 3 for a trained ODE-Net.

    ``sweep``: rows of ``arrays/fig3_sweep.csv`` (tol, nfe_forward, nfe_backward, time_s, rel_error per test
    batch); ``train``: the run's ``kind == "train"`` metric records (epoch, nfe_forward).
    """
    from matplotlib.figure import Figure

    s = sweep.groupby("tol", as_index=False).mean(numeric_only=True).sort_values("nfe_forward")
    fig = Figure(figsize=(17, 4))
    ax = fig.subplots(1, 4)
    ax[0].plot(s["nfe_forward"], s["rel_error"], "o-")
    ax[0].set(xlabel="NFE forward", ylabel="numerical error (relative, vs tol/1000 solve)", yscale="log",
              title="(a) NFE forward vs numerical error")
    for _, r in s.iterrows():
        ax[0].annotate(f"{r['tol']:.0e}", (r["nfe_forward"], r["rel_error"]), fontsize=7, xytext=(3, 3),
                       textcoords="offset points")
    ax[1].plot(s["nfe_forward"], s["time_s"], "o-")
    ax[1].set(xlabel="NFE forward", ylabel="wall time per batch (s)", title="(b) NFE forward vs time")
    if s["nfe_backward"].notna().any():
        ax[2].plot(s["nfe_forward"], s["nfe_backward"], "o-", label="measured")
        lim = max(s["nfe_forward"].max(), s["nfe_backward"].max()) * 1.05
        ax[2].plot([0, lim], [0, lim], ":", color="gray", label="backward = forward")
        ax[2].plot([0, lim], [0, lim / 2], "--", color="gray", label="backward = forward / 2 (paper)")
        ax[2].legend(fontsize=7)
    ax[2].set(xlabel="NFE forward", ylabel="NFE backward", title="(c) NFE backward vs forward")
    t = train.dropna(subset=["nfe_forward"])
    ax[3].plot(t["epoch"], t["nfe_forward"], "-")
    ax[3].set(xlabel="training epoch", ylabel="NFE forward per batch", title="(d) NFE over training")
    for a in ax:
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

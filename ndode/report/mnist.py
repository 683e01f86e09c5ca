"""MNIST's Table 1 and Figure 3, as pure functions of the collector's DataFrame and run arrays.

No training code is imported here: the inputs are run records (``load_runs``),
each ODE run's ``arrays/fig3_sweep.csv`` and its ``metrics.jsonl`` records.
"""

from __future__ import annotations

import math

import pandas as pd

__all__ = ["PAPER_TABLE1", "MODEL_ORDER", "table1", "table1_markdown", "plot_fig3"]

MODEL_ORDER = ("mlp", "resnet", "rknet", "odenet")
MODEL_LABELS = {"mlp": "1-Layer MLP", "resnet": "ResNet", "rknet": "RK-Net", "odenet": "ODE-Net"}
# Chen et al. (2018), Table 1: test error (%), parameters, memory, time. (The MLP row is LeCun et al. 1998's.)
PAPER_TABLE1 = {
    "mlp": {"error": "1.60%", "params": "0.24 M", "memory": "-", "time": "-"},
    "resnet": {"error": "0.41%", "params": "0.60 M", "memory": "O(L)", "time": "O(L)"},
    "rknet": {"error": "0.47%", "params": "0.22 M", "memory": "O(L̃)", "time": "O(L̃)"},
    "odenet": {"error": "0.42%", "params": "0.22 M", "memory": "O(1)", "time": "O(L̃)"},
}
MIB = 2**20


def _mean_std(values) -> tuple[float, float, int]:
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return float("nan"), float("nan"), 0
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else float("nan")
    return m, sd, len(v)


def _fmt(mean: float, sd: float, spec: str, unit: str = "") -> str:
    if mean != mean:
        return "–"
    return f"{mean:{spec}}{unit}" + (f" ± {sd:{spec}}{unit}" if sd == sd else "")


def table1(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (budget, model): measured values (mean ± std over seeds) beside the paper's."""
    need = ["budget.name", "model.name", "seed", "test_error", "params", "saved_bytes", "step_time_s"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise KeyError(f"MNIST runs lack columns {missing}; are these records from experiments/mnist.py?")
    rows = []
    for (budget, model), g in df.groupby(["budget.name", "model.name"], sort=False):
        err, err_sd, n = _mean_std(g["test_error"] * 100)
        saved, _, _ = _mean_std(g["saved_bytes"])
        grown, _, _ = _mean_std(g["saved_bytes_grown"]) if "saved_bytes_grown" in g else (float("nan"),) * 3
        growth = "–"
        if grown == grown:
            what = g["growth_what"].iloc[0]
            if "memory_nfe" in g and g["memory_nfe"].notna().any():
                nfe0, nfe1 = g["memory_nfe"].mean(), g["memory_nfe_grown"].mean()
                what = f"{what}: NFE {nfe0:.0f}→{nfe1:.0f}"
            growth = f"×{grown / saved:.2f} ({what})"
        step, step_sd, _ = _mean_std(g["step_time_s"])
        test_t, _, _ = _mean_std(g.get("test_time_per_128_s", pd.Series(dtype=float)))
        nfe_f, _, _ = _mean_std(g.get("train_nfe_forward", pd.Series(dtype=float)))
        nfe_b, _, _ = _mean_std(g.get("train_nfe_backward", pd.Series(dtype=float)))
        epochs = g["epochs"].iloc[0] if "epochs" in g else float("nan")
        paper = PAPER_TABLE1.get(model, {})
        rows.append({
            "budget": budget, "model": MODEL_LABELS.get(model, model), "_order": MODEL_ORDER.index(model)
            if model in MODEL_ORDER else 99, "seeds": n, "epochs": f"{epochs:.2f}",
            "test error": _fmt(err, err_sd, ".2f", "%"), "paper error": paper.get("error", "–"),
            "params": f"{g['params'].iloc[0] / 1e6:.3f} M", "paper params": paper.get("params", "–"),
            "saved for backward / batch": f"{saved / MIB:.1f} MiB", "growth": growth,
            "paper memory": paper.get("memory", "–"),
            "train step": _fmt(step, step_sd, ".3f", " s"), "test / 128 images": _fmt(test_t, float("nan"), ".3f", " s"),
            "NFE-F / NFE-B": "–" if nfe_f != nfe_f else f"{nfe_f:.1f} / " + ("–" if nfe_b != nfe_b else f"{nfe_b:.1f}"),
            "paper time": paper.get("time", "–"),
        })
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values(["budget", "_order"]).drop(columns="_order").reset_index(drop=True)


def table1_markdown(table: pd.DataFrame) -> str:
    """Markdown for :func:`table1`, with a note on what each column measures."""
    header = "| " + " | ".join(table.columns) + " |\n| " + " | ".join("---" for _ in table.columns) + " |\n"
    body = "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in table.itertuples(index=False))
    note = (
        "\nMeasured: test error on the MNIST test set (10,000 images; smoke budgets use a subset) after the "
        "budget's schedule (mean ± std over seeds); parameters counted; bytes autograd saves for backward for "
        "one training batch (128 images at the cpu and paper budgets; parameters "
        "excluded), and how they change with depth (ResNet: twice the blocks) or with solver work (RK-Net, "
        "ODE-Net: the trained model at a 100× tighter tolerance, NFE shown) — O(L) and O(L̃) grow, O(1) does not; "
        "median seconds per training step (batch 128, one CPU thread) and per 128 test images; mean NFE per "
        "training batch over the last logging interval (NFE-B: the adjoint's backward solve). Paper columns: "
        "Chen et al. (2018), Table 1.\n")
    return header + body + note


def plot_fig3(sweep: pd.DataFrame, train: pd.DataFrame, title: str = ""):
    """The paper's Figure 3 for a trained ODE-Net.

    ``sweep``: rows of ``arrays/fig3_sweep.csv`` (tol, nfe_forward, nfe_backward, time_s, rel_error per test
    batch); ``train``: the run's ``kind == "train"`` metric records (epoch, nfe_forward).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = sweep.groupby("tol", as_index=False).mean(numeric_only=True).sort_values("nfe_forward")
    fig, ax = plt.subplots(1, 4, figsize=(17, 4))
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

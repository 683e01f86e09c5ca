"""Benchmark 1 — solver overhead per function evaluation.

A 2-D MLP ODE (hidden 50, tanh) is cheap enough that a solver's own
bookkeeping shows. The figure of merit is (seconds per solve / NFE) divided by
the seconds of one bare ``func(t, y)`` call: 1.0 would be a solver that costs
nothing beyond its function evaluations. Everything runs under ``no_grad`` in
float32 with one thread; the peer solves and the bare call are timed side by
side (``timing.interleaved``).
"""

from __future__ import annotations

import pandas as pd
import torch

from . import peers as P
from .problems import MLPODE
from .timing import interleaved

NAME = "overhead"
SIZES = {
    "full": dict(batches=(1, 512), methods=("dopri5", "rk4"), t1=10.0, reps=15, warmup=1, target_s=0.1),
    "quick": dict(batches=(1, 512), methods=("dopri5", "rk4"), t1=2.0, reps=3, warmup=1, target_s=0.01),
    "tiny": dict(batches=(1,), methods=("dopri5", "rk4"), t1=0.2, reps=1, warmup=0, target_s=None),
}
RTOL, ATOL = 1e-5, 1e-6
RK4_STEP = 0.05
GOAL_RATIO = 3.0  # ndode: at most 3x the cost of func per evaluation
GOAL_VS_TORCHDIFFEQ = 5.0  # and at least 5x less than torchdiffeq


def run(sizes: dict, peers=P.PEERS) -> pd.DataFrame:
    rows = []
    func = MLPODE(dim=2, hidden=50, seed=0).requires_grad_(False)
    t = torch.tensor([0.0, sizes["t1"]])
    for batch in sizes["batches"]:
        y0 = torch.randn(batch, 2, generator=torch.Generator().manual_seed(1))
        t_func = torch.tensor(0.0)
        for method in sizes["methods"]:
            step = RK4_STEP if method == "rk4" else None
            names = [p for p in peers if P.available(p) and P.supports(p, method)]
            with torch.no_grad():
                nfe = {p: P.count_nfe(p, func, method, y0, t, RTOL, ATOL, step)[1] for p in names}
                solvers = {p: P.make_solver(p, func, method, RTOL, ATOL, step) for p in names}
                fns = {"func": lambda: func(t_func, y0)}
                fns.update({p: (lambda s=solvers[p]: s(y0, t)) for p in names})
                timings = interleaved(fns, reps=sizes["reps"], warmup=sizes["warmup"], target_s=sizes["target_s"])
            f = timings["func"]
            for p in names:
                tm = timings[p]
                rows.append(dict(
                    batch=batch, method=method, peer=p, nfe=nfe[p],
                    solve_s=tm.wall, solve_cpu_s=tm.cpu, func_s=f.wall, func_cpu_s=f.cpu,
                    per_nfe_s=tm.wall / nfe[p],
                    ratio=tm.wall / nfe[p] / f.wall,
                    ratio_cpu=tm.cpu / nfe[p] / f.cpu,
                    spread=tm.spread, reps=len(tm.wall_samples),
                ))
    return pd.DataFrame(rows)


def verdicts(df: pd.DataFrame) -> list[tuple[str, bool]]:
    """Per configuration: ndode ≤ 3x func, and its overhead beyond func ≥ 5x smaller than torchdiffeq's.

    "Overhead" is the time per NFE beyond the function call itself, (ratio − 1);
    the issue's "at least 5x less overhead than torchdiffeq" is read that way
    (the plain ratio of ratios is reported next to it).
    """
    out = []
    for (batch, method), g in df.groupby(["batch", "method"], sort=False):
        r = g.set_index("peer")["ratio"]
        if "ndode" not in r:
            continue
        nd = r["ndode"]
        out.append((f"{method}, batch {batch}: ndode {nd:.2f}x the bare func per NFE (goal ≤ {GOAL_RATIO:g}x)",
                    nd <= GOAL_RATIO))
        if "torchdiffeq" in r:
            td = r["torchdiffeq"]
            adv = (td - 1) / max(nd - 1, 1e-9)
            out.append((f"{method}, batch {batch}: overhead beyond func ndode {nd - 1:.2f}x vs torchdiffeq {td - 1:.2f}x, "
                        f"{adv:.1f}x less (goal ≥ {GOAL_VS_TORCHDIFFEQ:g}x; plain ratio {td / nd:.1f}x)",
                        adv >= GOAL_VS_TORCHDIFFEQ))
    return out


def summary(df: pd.DataFrame) -> str:
    parts = []
    for (batch, method), g in df.groupby(["batch", "method"], sort=False):
        r = g.set_index("peer")["ratio"]
        if "ndode" not in r:
            continue
        peers = ", ".join(f"{p} {r[p]:.1f}x (ndode/peer {r['ndode'] / r[p]:.2f})" for p in r.index if p != "ndode")
        parts.append(f"{method}/b{batch}: ndode {r['ndode']:.2f}x; {peers}")
    return "overhead per NFE (x bare func): " + " | ".join(parts)


def markdown(df: pd.DataFrame) -> str:
    lines = [
        "| method | batch | bare func (µs) | peer | NFE | solve (ms) | per NFE (µs) | × func | × func (CPU time) | ndode ÷ peer |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (batch, method), g in df.groupby(["batch", "method"], sort=False):
        nd = g.loc[g.peer == "ndode", "ratio"]
        nd = float(nd.iloc[0]) if len(nd) else float("nan")
        for _, row in g.iterrows():
            lines.append(
                f"| {method} | {batch} | {row.func_s * 1e6:.1f} | {row.peer} | {row.nfe} | {row.solve_s * 1e3:.2f} | "
                f"{row.per_nfe_s * 1e6:.1f} | {row.ratio:.2f} | {row.ratio_cpu:.2f} | "
                f"{'—' if row.peer == 'ndode' else f'{nd / row.ratio:.2f}'} |"
            )
    return "\n".join(lines)


def plot(df: pd.DataFrame, path) -> None:
    import matplotlib.pyplot as plt

    groups = list(df.groupby(["method", "batch"], sort=False))
    peers = [p for p in P.PEERS if p in set(df.peer)]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(peers))
    for j, p in enumerate(peers):
        xs, ys = [], []
        for i, (_, g) in enumerate(groups):
            r = g.loc[g.peer == p, "ratio"]
            if len(r):
                xs.append(i + (j - (len(peers) - 1) / 2) * width)
                ys.append(float(r.iloc[0]))
        ax.bar(xs, ys, width, label=p)
    ax.axhline(GOAL_RATIO, color="k", ls="--", lw=0.8, label=f"goal ≤ {GOAL_RATIO:g}x")
    ax.set_xticks(range(len(groups)), [f"{m}\nbatch {b}" for (m, b), _ in groups])
    ax.set_ylabel("time per NFE / bare func call")
    ax.set_title("Solver overhead per function evaluation (2-D MLP ODE, float32, 1 thread)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Benchmark 2 — work–precision: error against NFE and against wall time over a tolerance sweep.

Problems (float64, one trajectory, 11 output times): Van der Pol (μ=1, y0=(2, 0),
t in [0, 10]), Lotka–Volterra (α=1.5, β=1, γ=3, δ=1, y0=(1, 1), t in [0, 10]) and
a 10-D linear system (t in [0, 5]). Error: the largest absolute deviation over
all output times and components from SciPy DOP853 at rtol = atol = 1e-13.
Tolerances: rtol = atol = tol.

The goal compares ndode with torchdiffeq's same method at equal error: for each
ndode point, torchdiffeq's NFE at that error is read off its own curve
(log–log interpolation, linear extrapolation past its ends); ndode must need
no more.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch

from . import peers as P
from .problems import WORK_PRECISION_PROBLEMS, reference_solution
from .timing import interleaved

NAME = "work_precision"
TOLS = tuple(10.0**-k for k in range(3, 11))
SIZES = {
    # bosh3 stops at 1e-7: torchdiffeq's bosh3 needs ~25 s per solve at 1e-10 on this machine
    "full": dict(problems=tuple(WORK_PRECISION_PROBLEMS), methods={"dopri5": TOLS, "bosh3": TOLS[:5], "tsit5": TOLS},
                 reps=3, slow_s=1.0),
    "quick": dict(problems=("van_der_pol",), methods={"dopri5": TOLS[:4], "bosh3": TOLS[:3], "tsit5": TOLS[:4]},
                  reps=1, slow_s=0.5),
    "tiny": dict(problems=("van_der_pol",), methods={"dopri5": TOLS[:2], "bosh3": TOLS[:1], "tsit5": TOLS[:1]},
                 reps=1, slow_s=0.1),
}
N_OUT = 11
GOAL_METHODS = ("dopri5", "bosh3")  # the methods torchdiffeq shares with ndode


def run(sizes: dict, peers=P.PEERS) -> pd.DataFrame:
    rows = []
    for name in sizes["problems"]:
        func = WORK_PRECISION_PROBLEMS[name]()
        y0 = torch.tensor([func.y0], dtype=torch.float64)
        t = torch.linspace(0.0, func.t1, N_OUT, dtype=torch.float64)
        ref = reference_solution(func, y0, t)
        for method, tols in sizes["methods"].items():
            names = [p for p in peers if P.available(p) and P.supports(p, method)]
            for tol in tols:
                counted = {}
                slow = False
                for p in names:
                    w0 = time.perf_counter()
                    ys, nfe = P.count_nfe(p, func, method, y0, t, tol, tol)
                    slow = slow or time.perf_counter() - w0 > sizes["slow_s"]
                    counted[p] = (nfe, float((ys - ref).abs().max()))
                solvers = {p: P.make_solver(p, func, method, tol, tol) for p in names}
                with torch.no_grad():
                    tm = interleaved({p: (lambda s=solvers[p]: s(y0, t)) for p in names},
                                     reps=1 if slow else sizes["reps"], warmup=0, target_s=None)
                for p in names:
                    rows.append(dict(problem=name, method=method, peer=p, tol=tol, nfe=counted[p][0],
                                     error=counted[p][1], time_s=tm[p].wall, time_cpu_s=tm[p].cpu,
                                     reps=len(tm[p].wall_samples)))
    return pd.DataFrame(rows)


def _loglog_at(x_pts, y_pts, x):
    """y(x) on the log–log polyline through the points (sorted by x), extrapolated linearly past the ends."""
    order = np.argsort(x_pts)
    lx, ly = np.log10(np.asarray(x_pts)[order]), np.log10(np.asarray(y_pts)[order])
    if len(lx) == 1:
        return float(10 ** ly[0])
    lxq = math.log10(x)
    if lxq < lx[0]:
        i = 0
    elif lxq > lx[-1]:
        i = len(lx) - 2
    else:
        return float(10 ** np.interp(lxq, lx, ly))
    slope = (ly[i + 1] - ly[i]) / (lx[i + 1] - lx[i]) if lx[i + 1] != lx[i] else 0.0
    return float(10 ** (ly[i] + slope * (lxq - lx[i])))


def equal_error_table(df: pd.DataFrame, peer: str = "torchdiffeq") -> pd.DataFrame:
    """Per ndode point: ``peer``'s NFE at ndode's error and the ratio ndode NFE / that."""
    rows = []
    for (problem, method), g in df.groupby(["problem", "method"], sort=False):
        other = g[g.peer == peer]
        nd = g[g.peer == "ndode"]
        if len(other) < 1 or len(nd) < 1:
            continue
        for _, r in nd.iterrows():
            same = other[other.tol == r.tol]
            at = _loglog_at(other.error.values, other.nfe.values, max(r.error, 1e-300))
            rows.append(dict(problem=problem, method=method, tol=r.tol, ndode_nfe=r.nfe, ndode_error=r.error,
                             peer=peer, peer_nfe=int(same.nfe.iloc[0]) if len(same) else np.nan,
                             peer_error=float(same.error.iloc[0]) if len(same) else np.nan,
                             peer_nfe_at_ndode_error=at, nfe_ratio_equal_error=r.nfe / at,
                             time_ratio=r.time_s / float(same.time_s.iloc[0]) if len(same) else np.nan))
    return pd.DataFrame(rows)


def verdicts(df: pd.DataFrame) -> list[tuple[str, bool]]:
    eq = equal_error_table(df)
    out = []
    for (problem, method), g in eq.groupby(["problem", "method"], sort=False):
        if method not in GOAL_METHODS:
            continue
        bad = g[g.nfe_ratio_equal_error > 1.0 + 1e-9]
        worst = g.nfe_ratio_equal_error.max()
        text = (f"{problem}, {method}: ndode NFE ÷ torchdiffeq NFE at equal error ≤ {worst:.2f} over "
                f"{len(g)} tolerances")
        if len(bad):
            text += " — more NFE at tol " + ", ".join(f"{t:.0e} ({x:.2f})" for t, x in zip(bad.tol, bad.nfe_ratio_equal_error))
        out.append((text, len(bad) == 0))
    return out


def summary(df: pd.DataFrame) -> str:
    eq = equal_error_table(df)
    parts = []
    for method in GOAL_METHODS:
        g = eq[eq.method == method]
        if len(g):
            parts.append(f"{method} NFE ndode/torchdiffeq at equal error: median {g.nfe_ratio_equal_error.median():.2f}, "
                         f"worst {g.nfe_ratio_equal_error.max():.2f}; wall time ratio median {g.time_ratio.median():.2f}")
    to = equal_error_table(df, "torchode")
    for method in ("dopri5", "tsit5"):
        g = to[to.method == method]
        if len(g):
            parts.append(f"{method} vs torchode: NFE ratio median {g.nfe_ratio_equal_error.median():.2f}, "
                         f"time ratio median {g.time_ratio.median():.2f}")
    return "work-precision: " + " | ".join(parts)


def markdown(df: pd.DataFrame) -> str:
    peers = [p for p in P.PEERS if p in set(df.peer)]
    out = []
    for (problem, method), g in df.groupby(["problem", "method"], sort=False):
        ps = [p for p in peers if p in set(g.peer)]
        head = "| tol | " + " | ".join(f"{p} NFE / error / ms" for p in ps) + " | ndode ÷ " + " | ndode ÷ ".join(
            f"{p} NFE at equal error" for p in ps if p != "ndode") + " |"
        out.append(f"**{problem}, {method}**\n")
        out.append(head)
        out.append("| ---: | " + " | ".join("---:" for _ in ps) + " | " + " | ".join("---:" for p in ps if p != "ndode") + " |")
        eqs = {p: equal_error_table(g, p).set_index("tol") for p in ps if p != "ndode"}
        for tol, r in g.groupby("tol", sort=False):
            r = r.set_index("peer")
            cells = [f"{int(r.loc[p, 'nfe'])} / {r.loc[p, 'error']:.1e} / {r.loc[p, 'time_s'] * 1e3:.0f}" for p in ps]
            ratios = [f"{eqs[p].loc[tol, 'nfe_ratio_equal_error']:.2f}" if tol in eqs[p].index else "—" for p in eqs]
            out.append(f"| {tol:.0e} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        out.append("")
    return "\n".join(out)


def plot(df: pd.DataFrame, path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    problems = list(dict.fromkeys(df.problem))
    colors = {"ndode": "C0", "torchdiffeq": "C1", "torchode": "C2", "scipy": "C3"}
    styles = {"dopri5": "-o", "bosh3": "--s", "tsit5": ":^"}
    fig, axes = plt.subplots(len(problems), 2, figsize=(10, 3.2 * len(problems)), squeeze=False)
    for i, problem in enumerate(problems):
        g = df[df.problem == problem]
        for (method, peer), h in g.groupby(["method", "peer"], sort=False):
            h = h.sort_values("tol")
            nd = peer == "ndode"  # drawn on top: SciPy's curves coincide with ndode's
            kw = dict(color=colors.get(peer), ms=4 if nd else 3, lw=1.8 if nd else 1, zorder=3 if nd else 2,
                      label=f"{peer} {method}")
            axes[i, 0].loglog(h.nfe, h.error, styles.get(method, "-o"), **kw)
            axes[i, 1].loglog(h.time_s, h.error, styles.get(method, "-o"), **kw)
        axes[i, 0].set_title(f"{problem}: error vs NFE")
        axes[i, 1].set_title(f"{problem}: error vs wall time")
        axes[i, 0].set_xlabel("function evaluations")
        axes[i, 1].set_xlabel("seconds per solve")
        for ax in axes[i]:
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_ylabel("max abs error")
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

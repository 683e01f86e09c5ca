"""Benchmark 5 (beyond the paper) — the cost of one shared step size in a batch.

Two harmonic oscillators, x'' = -ω² x with x(0) = 1, x'(0) = 0, ω = 1 (easy)
and ω = 30 (fast: thirty times more steps for the same accuracy), dopri5 at
rtol = atol = 1e-6 over [0, 10] with 101 output times (``quick``: [0, 2], 21), float64. Each is solved
alone and both in one batch. ndode, torchdiffeq and SciPy (which sees the batch
as one 4-D system) take one step size for the whole batch, so the easy sample
is carried along at the fast one's steps: more accurate than asked, at the
fast one's price. torchode controls each sample's step separately, but still
evaluates ``func`` on the whole batch at every stage. Error: the largest
absolute error of x(t) over the output times against the exact cos(ωt).
"""

from __future__ import annotations

import pandas as pd
import torch

from . import peers as P
from .problems import Oscillators
from .timing import CallCounter, interleaved

NAME = "batch_coupling"
OMEGAS = (1.0, 30.0)
TOL = 1e-6
SIZES = {
    "full": dict(t1=10.0, n_out=101, reps=5, warmup=1),
    "quick": dict(t1=2.0, n_out=21, reps=1, warmup=0),
    "tiny": dict(t1=0.2, n_out=3, reps=1, warmup=0),
}


def run(sizes: dict, peers=P.PEERS) -> pd.DataFrame:
    names = [p for p in peers if P.available(p) and P.supports(p, "dopri5")]
    t = torch.linspace(0.0, sizes["t1"], sizes["n_out"], dtype=torch.float64)
    settings = {f"alone ω={w:g}": (w,) for w in OMEGAS}
    settings["batch"] = OMEGAS
    rows = []
    timed = {}
    for setting, omegas in settings.items():
        func = Oscillators(omegas)
        y0, exact = func.y0(), func.exact(t)
        for p in names:
            counter = CallCounter(func)
            solver = P.make_solver(p, counter, "dopri5", TOL, TOL)
            with torch.no_grad():
                ys = solver(y0, t)
            stats = getattr(solver, "last_stats", None)
            for i, w in enumerate(omegas):
                err = float((ys[:, i, 0] - exact[:, i, 0]).abs().max())
                rows.append(dict(peer=p, setting=setting, omega=w, calls=counter.n,
                                 sample_steps=int(stats["n_steps"][i]) if stats is not None else None,
                                 error=err, batch=len(omegas)))
            if setting == "batch":
                bare = P.make_solver(p, func, "dopri5", TOL, TOL)
                timed[p] = lambda s=bare, y0=y0: s(y0, t)
    with torch.no_grad():
        tm = interleaved(timed, reps=sizes["reps"], warmup=sizes["warmup"], target_s=None)
    df = pd.DataFrame(rows)
    df["batch_solve_s"] = df.peer.map({p: tm[p].wall for p in tm})
    return df


def _calls(df, peer, setting):
    r = df[(df.peer == peer) & (df.setting == setting)]
    return int(r.calls.iloc[0]) if len(r) else None


def summary(df: pd.DataFrame) -> str:
    parts = []
    for p in dict.fromkeys(df.peer):
        alone = sum(_calls(df, p, f"alone ω={w:g}") for w in OMEGAS)
        parts.append(f"{p} batch {_calls(df, p, 'batch')} calls (alone {alone} in total), "
                     f"{df.loc[df.peer == p, 'batch_solve_s'].iloc[0] * 1e3:.0f} ms")
    nd = df.loc[df.peer == "ndode", "batch_solve_s"].iloc[0]
    ratios = ", ".join(f"{p} {nd / df.loc[df.peer == p, 'batch_solve_s'].iloc[0]:.2f}"
                       for p in dict.fromkeys(df.peer) if p != "ndode")
    return "batch coupling (ω=1 & 30): " + "; ".join(parts) + f" | batch time ndode/peer: {ratios}"


def findings(df: pd.DataFrame) -> list[str]:
    """The easy sample's price in a batch, per peer, in words."""
    easy = f"alone ω={OMEGAS[0]:g}"
    out = []
    for p in dict.fromkeys(df.peer):
        a = df[(df.peer == p) & (df.setting == easy)].iloc[0]
        b = df[(df.peer == p) & (df.setting == "batch") & (df.omega == OMEGAS[0])].iloc[0]
        if b.sample_steps == b.sample_steps and b.sample_steps is not None:
            out.append(f"{p}: the ω={OMEGAS[0]:g} sample keeps its own {int(b.sample_steps)} steps and error "
                       f"{b.error:.0e} in the batch (alone: {int(a.sample_steps)} steps, {a.error:.0e}), but func is "
                       f"called {b.calls} times on the whole batch ({b.calls / a.calls:.0f}x its {a.calls} alone)")
        else:
            out.append(f"{p}: in the batch the ω={OMEGAS[0]:g} sample is evaluated {b.calls} times instead of "
                       f"{a.calls} ({b.calls / a.calls:.0f}x) and comes out at error {b.error:.0e} instead of "
                       f"{a.error:.0e} (rtol = atol = {TOL:g})")
    return out


def markdown(df: pd.DataFrame) -> str:
    lines = [f"- {x}" for x in findings(df)] + ["", "| peer | setting | ω | func calls | steps of this sample | error of x | batch solve (ms) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in df.itertuples():
        steps = "shared" if r.sample_steps is None or r.sample_steps != r.sample_steps else f"{int(r.sample_steps)}"
        ms = f"{r.batch_solve_s * 1e3:.1f}" if r.setting == "batch" else ""
        lines.append(f"| {r.peer} | {r.setting} | {r.omega:g} | {r.calls} | {steps} | {r.error:.1e} | {ms} |")
    return "\n".join(lines)


def verdicts(df: pd.DataFrame) -> list[tuple[str, bool]]:
    return []  # no goal: this benchmark documents a cost, it does not judge one

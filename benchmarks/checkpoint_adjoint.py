"""Benchmark 7 — three ways to a gradient: backsolve adjoint, checkpointed adjoint, direct backpropagation.

The latent ODE's dynamics (issue 17): a 4-D state, an MLP with two hidden
layers of 20 units (tanh), batch 1000, float32, dopri5 over t in [0, 5] with
100 output times and a loss on every output, sum_i <w_i, y(t_i)>. One
training iteration (forward + backward) is timed for each method, interleaved
in one run (rotating order, median of the repetitions); torchdiffeq's adjoint
(its default norm) runs alongside when installed. "Saved" is what autograd
keeps for the backward pass after the forward (``ndode.memory``, parameters
excluded). "vs direct" is the relative difference of the parameter gradient
from direct backpropagation's at the same tolerance (the checkpointed adjoint
computes the same numbers); "vs exact" from a float64 solve at rtol = atol =
1e-10.
"""

from __future__ import annotations

import copy

import pandas as pd
import torch

import ndode
from ndode.memory import saved_tensor_bytes

from . import peers as P
from .problems import MLPODE
from .timing import CallCounter, interleaved

NAME = "checkpoint_adjoint"
SIZES = {
    "full": dict(tols=(1e-3, 1e-5), batch=1000, n_out=100, reps=5, warmup=1),
    "quick": dict(tols=(1e-3,), batch=1000, n_out=100, reps=2, warmup=1),
    "tiny": dict(tols=(1e-3,), batch=4, n_out=5, reps=1, warmup=0),
}
T1 = 5.0
METHODS = ("direct", "backsolve", "checkpoint")


def _variants(peers):
    out = [("ndode", m) for m in METHODS]
    if "torchdiffeq" in peers and P.available("torchdiffeq"):
        out.append(("torchdiffeq", "backsolve"))
    return out


def _label(lib, method):
    return f"{lib} {method}"


def _solve(lib, method, func, y0, t, tol):
    """ys and the solve's stats (None for torchdiffeq)."""
    if lib == "ndode":
        adjoint = {"direct": None, "backsolve": ndode.BacksolveAdjoint(), "checkpoint": ndode.CheckpointAdjoint()}
        sol = ndode.solve(func, y0, t, rtol=tol, atol=tol, adjoint=adjoint[method])
        return sol.ys, sol.stats
    import torchdiffeq

    return torchdiffeq.odeint_adjoint(func, y0, t, rtol=tol, atol=tol, method="dopri5"), None


def run(sizes: dict, peers=P.PEERS) -> pd.DataFrame:
    func = MLPODE(dim=4, hidden=20, layers=2, seed=0, scale=1.5)
    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(sizes["batch"], 4, generator=g)
    t = torch.linspace(0.0, T1, sizes["n_out"])
    w = torch.randn(sizes["n_out"], sizes["batch"], 4, generator=g)
    params = list(func.parameters())

    def flat_grad(f):
        return torch.cat([p.grad.reshape(-1) for p in f.parameters()]).double()

    f64 = copy.deepcopy(func).double()
    (ndode.odeint(f64, y0.double(), t.double(), rtol=1e-10, atol=1e-10) * w.double()).sum().backward()
    exact = flat_grad(f64)
    rows = []
    for tol in sizes["tols"]:
        info, fns, grads = {}, {}, {}
        for lib, method in _variants(peers):
            name = _label(lib, method)
            counter = CallCounter(func)
            func.zero_grad(set_to_none=True)
            ys, stats = _solve(lib, method, counter, y0, t, tol)
            nf = counter.n
            (ys * w).sum().backward()
            grads[name] = flat_grad(func)
            nb = counter.n - nf if method != "direct" else None
            saved = saved_tensor_bytes(lambda: _solve(lib, method, func, y0, t, tol)[0], ignore=params)
            info[name] = (nf, nb, saved, stats.n_accepted if stats is not None else None)

            def step(lib=lib, method=method):
                func.zero_grad(set_to_none=True)
                (_solve(lib, method, func, y0, t, tol)[0] * w).sum().backward()

            fns[name] = step
        func.zero_grad(set_to_none=True)
        tm = interleaved(fns, reps=sizes["reps"], warmup=sizes["warmup"], target_s=None)
        direct = grads[_label("ndode", "direct")]
        for lib, method in _variants(peers):
            name = _label(lib, method)
            nf, nb, saved, steps = info[name]
            rows.append(dict(tol=tol, variant=name, library=lib, method=method, n_out=sizes["n_out"],
                             batch=sizes["batch"], steps=steps, nfe_forward=nf, nfe_backward=nb, saved_bytes=saved,
                             grad_vs_direct=float((grads[name] - direct).norm() / direct.norm()),
                             grad_vs_exact=float((grads[name] - exact).norm() / exact.norm()),
                             iter_s=tm[name].wall, iter_cpu_s=tm[name].cpu, reps=len(tm[name].wall_samples)))
    return pd.DataFrame(rows)


def _pick(g, variant, col):
    r = g.loc[g.variant == variant, col]
    return float(r.iloc[0]) if len(r) else float("nan")


def ratios(g) -> dict:
    """Checkpoint's time over direct's and over backsolve's; its saved bytes over direct's."""
    ck = _pick(g, "ndode checkpoint", "iter_s")
    return dict(vs_direct=ck / _pick(g, "ndode direct", "iter_s"), vs_backsolve=ck / _pick(g, "ndode backsolve", "iter_s"),
                saved_vs_direct=_pick(g, "ndode checkpoint", "saved_bytes") / _pick(g, "ndode direct", "saved_bytes"))


def verdicts(df: pd.DataFrame) -> list[tuple[str, bool]]:
    out = []
    for tol, g in df.groupby("tol"):
        r = ratios(g)
        out.append((f"rtol {tol:.0e}: checkpoint {r['vs_direct']:.2f}× direct backprop's time (goal ≤ 2)",
                    r["vs_direct"] <= 2.0))
        out.append((f"rtol {tol:.0e}: checkpoint {r['vs_backsolve']:.2f}× the backsolve adjoint's time (goal ≤ 0.2)",
                    r["vs_backsolve"] <= 0.2))
    return out


def summary(df: pd.DataFrame) -> str:
    parts = []
    for tol, g in df.groupby("tol"):
        r = ratios(g)
        parts.append(f"rtol {tol:.0e}: time ×{r['vs_direct']:.2f} direct, ×{r['vs_backsolve']:.2f} backsolve; "
                     f"saved ×{r['saved_vs_direct']:.3f} direct")
    return "checkpointed adjoint, 100 outputs: " + "; ".join(parts)


def markdown(df: pd.DataFrame) -> str:
    lines = ["| rtol = atol | variant | steps | NFE-F | NFE-B | saved (MiB) | iteration (ms) | ÷ direct (time) | "
             "grad vs direct | grad vs exact |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for tol, g in df.groupby("tol"):
        td = _pick(g, "ndode direct", "iter_s")
        for r in g.itertuples():
            nb = "—" if r.nfe_backward is None or r.nfe_backward != r.nfe_backward else f"{int(r.nfe_backward)}"
            steps = "—" if r.steps is None or r.steps != r.steps else f"{int(r.steps)}"
            lines.append(f"| {tol:.0e} | {r.variant} | {steps} | {r.nfe_forward} | {nb} | {r.saved_bytes / 2**20:.2f} | "
                         f"{r.iter_s * 1e3:.1f} | {r.iter_s / td:.2f} | {r.grad_vs_direct:.1e} | {r.grad_vs_exact:.1e} |")
    return "\n".join(lines)

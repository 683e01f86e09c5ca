"""Benchmark 6 — backward work of a solve with many output times (a latent-ODE-like decoder).

An MLP ODE (latent dimension 4, two hidden layers of 32, tanh), batch 32,
float32, dopri5 over t in [0, 5] with 100 output times and a loss that touches
every output: sum_i <w_i, y(t_i)>. torchdiffeq's adjoint solves each gap
between output times as a fresh initial value problem (a new initial-step
search every time); ndode's backward solve passes the output times as clipped
steps and carries its step size across them. Direct backpropagation through
the solver's operations (no adjoint) is shown for reference: it has no
backward solve, it replays one vector–Jacobian product per forward
evaluation. Gradient error: relative to direct backpropagation through an
ndode solve in float64 at rtol = atol = 1e-10.
"""

from __future__ import annotations

import copy

import pandas as pd
import torch

import ndode

from . import peers as P
from .problems import MLPODE
from .timing import CallCounter, interleaved

NAME = "adjoint_nfe"
SIZES = {
    "full": dict(tols=(1e-3, 1e-4, 1e-5, 1e-6), batch=32, n_out=100, reps=3, warmup=1),
    "quick": dict(tols=(1e-3,), batch=32, n_out=100, reps=1, warmup=0),
    "tiny": dict(tols=(1e-3,), batch=4, n_out=5, reps=1, warmup=0),
}
T1 = 5.0


def _variants(peers):
    out = [("ndode", "adjoint", "seminorm"), ("ndode", "adjoint", "full"), ("ndode", "direct", "")]
    if "torchdiffeq" in peers and P.available("torchdiffeq"):
        out += [("torchdiffeq", "adjoint", "full"), ("torchdiffeq", "adjoint", "seminorm"), ("torchdiffeq", "direct", "")]
    return out


def _label(lib, mode, norm):
    return f"{lib} {mode}" + (f" ({norm})" if norm else "")


def _solve(lib, mode, norm, func, y0, t, tol):
    if lib == "ndode":
        if mode == "direct":
            return ndode.odeint(func, y0, t, rtol=tol, atol=tol)
        return ndode.odeint_adjoint(func, y0, t, rtol=tol, atol=tol, adjoint_options={"norm": norm})
    import torchdiffeq

    if mode == "direct":
        return torchdiffeq.odeint(func, y0, t, rtol=tol, atol=tol, method="dopri5")
    opts = {"norm": "seminorm"} if norm == "seminorm" else None
    return torchdiffeq.odeint_adjoint(func, y0, t, rtol=tol, atol=tol, method="dopri5", adjoint_options=opts)


def run(sizes: dict, peers=P.PEERS) -> pd.DataFrame:
    func = MLPODE(dim=4, hidden=32, layers=2, seed=0, scale=1.5)
    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(sizes["batch"], 4, generator=g)
    t = torch.linspace(0.0, T1, sizes["n_out"])
    w = torch.randn(sizes["n_out"], sizes["batch"], 4, generator=g)

    def grads(f, dtype, solve):
        f.zero_grad(set_to_none=True)
        (solve(f, y0.to(dtype), t.to(dtype)) * w.to(dtype)).sum().backward()
        return torch.cat([p.grad.reshape(-1) for p in f.parameters()]).double()

    ref = grads(copy.deepcopy(func).double(), torch.float64,
                lambda f, y, s: ndode.odeint(f, y, s, rtol=1e-10, atol=1e-10))
    rows = []
    for tol in sizes["tols"]:
        counts, fns = {}, {}
        for lib, mode, norm in _variants(peers):
            name = _label(lib, mode, norm)
            counter = CallCounter(func)
            func.zero_grad(set_to_none=True)  # the timed runs of the previous tolerance leave gradients behind
            ys = _solve(lib, mode, norm, counter, y0, t, tol)
            nf = counter.n
            (ys * w).sum().backward()
            g_ = torch.cat([p.grad.reshape(-1) for p in func.parameters()]).double()
            func.zero_grad(set_to_none=True)
            counts[name] = (nf, counter.n - nf if mode == "adjoint" else None,
                            float((g_ - ref).norm() / ref.norm()))

            def step(lib=lib, mode=mode, norm=norm):
                func.zero_grad(set_to_none=True)
                (_solve(lib, mode, norm, func, y0, t, tol) * w).sum().backward()

            fns[name] = step
        tm = interleaved(fns, reps=sizes["reps"], warmup=sizes["warmup"], target_s=None)
        for lib, mode, norm in _variants(peers):
            name = _label(lib, mode, norm)
            nf, nb, gerr = counts[name]
            rows.append(dict(tol=tol, variant=name, library=lib, mode=mode, norm=norm or "—", n_out=sizes["n_out"],
                             nfe_forward=nf, nfe_backward=nb, grad_rel_error=gerr,
                             fwd_bwd_s=tm[name].wall, fwd_bwd_cpu_s=tm[name].cpu, reps=len(tm[name].wall_samples)))
    return pd.DataFrame(rows)


def _pick(g, variant, col):
    r = g.loc[g.variant == variant, col]
    return float(r.iloc[0]) if len(r) else float("nan")


def verdicts(df: pd.DataFrame) -> list[tuple[str, bool]]:
    out = []
    for norm in ("full", "seminorm"):
        if f"torchdiffeq adjoint ({norm})" not in set(df.variant):
            continue
        for tol, g in df.groupby("tol"):
            nb = _pick(g, f"ndode adjoint ({norm})", "nfe_backward")
            tb = _pick(g, f"torchdiffeq adjoint ({norm})", "nfe_backward")
            out.append((f"rtol {tol:.0e}, {norm} norm: NFE-B ndode {nb:.0f} vs torchdiffeq {tb:.0f} "
                        f"(ratio {nb / tb:.2f}; goal: fewer)", nb < tb))
    return out


def summary(df: pd.DataFrame) -> str:
    parts = []
    for tol, g in df.groupby("tol"):
        s = f"rtol {tol:.0e}: NFE-B ndode {_pick(g, 'ndode adjoint (seminorm)', 'nfe_backward'):.0f}"
        if "torchdiffeq adjoint (full)" in set(g.variant):
            s += (f" vs torchdiffeq {_pick(g, 'torchdiffeq adjoint (full)', 'nfe_backward'):.0f} (default norms), "
                  f"time ratio {_pick(g, 'ndode adjoint (seminorm)', 'fwd_bwd_s') / _pick(g, 'torchdiffeq adjoint (full)', 'fwd_bwd_s'):.2f}")
        parts.append(s)
    return "adjoint NFE, 100 outputs: " + "; ".join(parts)


def markdown(df: pd.DataFrame) -> str:
    lines = ["| rtol = atol | variant | NFE-F | NFE-B | fwd + bwd (ms) | ÷ torchdiffeq adjoint, same norm (time) | grad rel. error |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for tol, g in df.groupby("tol"):
        for r in g.itertuples():
            ratio = "—"
            if r.library == "ndode" and r.mode == "adjoint":
                td = _pick(g, f"torchdiffeq adjoint ({r.norm})", "fwd_bwd_s")
                ratio = "—" if td != td else f"{r.fwd_bwd_s / td:.2f}"
            nb = "—" if r.nfe_backward is None or r.nfe_backward != r.nfe_backward else f"{int(r.nfe_backward)}"
            lines.append(f"| {tol:.0e} | {r.variant} | {r.nfe_forward} | {nb} | {r.fwd_bwd_s * 1e3:.1f} | {ratio} | "
                         f"{r.grad_rel_error:.1e} |")
    return "\n".join(lines)


def plot(df: pd.DataFrame, path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, g in df.groupby("variant", sort=False):
        g = g.sort_values("tol")
        kw = dict(marker="o", ms=3, label=name, color="C0" if name.startswith("ndode") else "C1",
                  ls="-" if "seminorm" in name else ("--" if "full" in name else ":"))
        if g.nfe_backward.notna().any():
            axes[0].loglog(g.tol, g.nfe_backward.astype(float), **kw)
        axes[1].loglog(g.tol, g.fwd_bwd_s, **kw)
    axes[0].set_title("backward NFE (100 output times)")
    axes[1].set_title("forward + backward wall time (s)")
    for ax in axes:
        ax.set_xlabel("rtol = atol")
        ax.invert_xaxis()
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

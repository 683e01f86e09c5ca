"""Benchmark 4 — memory against the number of solver steps: adjoint vs direct backpropagation.

The paper's O(1)-memory claim, measured two ways for ndode and torchdiffeq:

* ``saved_bytes``: the bytes autograd keeps for the backward pass after the
  forward (``ndode.memory.saved_tensor_bytes``, parameters excluded) — exact
  and allocator-independent;
* ``peak_rss_bytes``: the rise of the process's peak resident memory during
  forward + backward over the resident memory before (Linux: the peak mark is
  reset through ``/proc/self/clear_refs`` and free heap is returned with
  ``malloc_trim`` first) — what a user's machine actually has to hold.

Dynamics: an MLP ODE (32-D state, hidden 128, tanh), batch 128, float32,
fixed-step RK4 over [0, 1] with 10 … 1000 steps, so the step count is exact.
"""

from __future__ import annotations

import ctypes
import gc
import time

import pandas as pd
import torch

import ndode
from ndode.memory import saved_tensor_bytes

from . import peers as P
from .problems import MLPODE
from .timing import peak_rss_bytes, peak_rss_reset

NAME = "adjoint_memory"
SIZES = {
    "full": dict(steps=(10, 30, 100, 300, 1000), batch=128, dim=32, hidden=128),
    "quick": dict(steps=(10, 100), batch=64, dim=16, hidden=64),
    "tiny": dict(steps=(2, 8), batch=4, dim=4, hidden=8),
}


def _malloc_trim():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _solve(lib, adjoint, func, y0, t, h):
    opts = {"step_size": h}
    if lib == "ndode":
        if adjoint:
            return ndode.odeint_adjoint(func, y0, t, method="rk4", options=opts)
        return ndode.odeint(func, y0, t, method="rk4", options=opts)
    import torchdiffeq

    if adjoint:
        return torchdiffeq.odeint_adjoint(func, y0, t, method="rk4", options=opts)
    return torchdiffeq.odeint(func, y0, t, method="rk4", options=opts)


def run(sizes: dict, peers=P.PEERS) -> pd.DataFrame:
    libs = ["ndode"] + (["torchdiffeq"] if "torchdiffeq" in peers and P.available("torchdiffeq") else [])
    func = MLPODE(dim=sizes["dim"], hidden=sizes["hidden"], seed=0, scale=1.0)
    params = list(func.parameters())
    y0 = torch.randn(sizes["batch"], sizes["dim"], generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 1.0])
    rows = []
    for lib in libs:  # warm-up: first calls allocate autograd's and the allocator's own structures
        for adjoint in (True, False):
            _solve(lib, adjoint, func, y0.clone().requires_grad_(True), t, 0.5)[-1].sum().backward()
    func.zero_grad(set_to_none=True)
    for n in sizes["steps"]:
        h = 1.0 / n
        for lib in libs:
            for adjoint in (True, False):
                def forward():
                    return _solve(lib, adjoint, func, y0.clone().requires_grad_(True), t, h)

                saved = saved_tensor_bytes(forward, ignore=params)
                gc.collect()
                _malloc_trim()
                base = peak_rss_reset()
                w0 = time.perf_counter()
                ys = forward()
                ys[-1].square().sum().backward()
                wall = time.perf_counter() - w0
                peak = peak_rss_bytes()
                del ys
                func.zero_grad(set_to_none=True)
                rows.append(dict(library=lib, mode="adjoint" if adjoint else "direct", steps=n,
                                 saved_bytes=saved,
                                 peak_rss_bytes=(peak - base) if base is not None and peak is not None else float("nan"),
                                 fwd_bwd_s=wall, state_bytes=y0.numel() * y0.element_size()))
    return pd.DataFrame(rows)


def _growth(g):
    """Bytes per step between the smallest and the largest step count."""
    g = g.sort_values("steps")[["steps", "saved_bytes", "peak_rss_bytes"]].astype(float)
    d = g.iloc[-1] - g.iloc[0]
    return d.saved_bytes / d.steps, d.peak_rss_bytes / d.steps


def verdicts(df: pd.DataFrame) -> list[tuple[str, bool]]:
    out = []
    for lib, g in df[df["mode"] == "adjoint"].groupby("library", sort=False):
        g = g.sort_values("steps")
        flat = g.saved_bytes.max() == g.saved_bytes.min()
        out.append((f"{lib} adjoint: saved bytes {g.saved_bytes.min():,}–{g.saved_bytes.max():,} for "
                    f"{g.steps.min()}–{g.steps.max()} steps (constant: {'yes' if flat else 'no'}); "
                    f"peak RSS rise {g.peak_rss_bytes.iloc[0] / 2**20:.1f} → {g.peak_rss_bytes.iloc[-1] / 2**20:.1f} MiB", flat))
    return out


def summary(df: pd.DataFrame) -> str:
    parts = []
    top = df.steps.max()
    for (lib, mode), g in df.groupby(["library", "mode"], sort=False):
        r = g[g.steps == top].iloc[0]
        parts.append(f"{lib} {mode}: {r.saved_bytes / 2**20:.2f} MiB saved, {r.peak_rss_bytes / 2**20:.0f} MiB peak")
    nd = df[(df.library == "ndode") & (df.steps == top)].set_index("mode")
    td = df[(df.library == "torchdiffeq") & (df.steps == top)].set_index("mode")
    line = f"adjoint memory @ {top} steps: " + "; ".join(parts)
    if len(td):
        line += (f" | ndode/torchdiffeq saved bytes: adjoint {nd.loc['adjoint', 'saved_bytes'] / td.loc['adjoint', 'saved_bytes']:.2f}, "
                 f"direct {nd.loc['direct', 'saved_bytes'] / td.loc['direct', 'saved_bytes']:.2f}")
    return line


def markdown(df: pd.DataFrame) -> str:
    combos = list(df.groupby(["library", "mode"], sort=False).groups)
    head = "| steps | " + " | ".join(f"{lib} {mode}: saved MiB / peak MiB" for lib, mode in combos) + " |"
    lines = [head, "| ---: | " + " | ".join("---:" for _ in combos) + " |"]
    for n, g in df.groupby("steps"):
        g = g.set_index(["library", "mode"])
        lines.append(f"| {n} | " + " | ".join(
            f"{g.loc[c, 'saved_bytes'] / 2**20:.3f} / {g.loc[c, 'peak_rss_bytes'] / 2**20:.1f}" for c in combos) + " |")
    lines.append("")
    lines.append("Growth per solver step (between the smallest and largest step count): " + "; ".join(
        f"{lib} {mode} {_growth(g)[0] / 1024:.1f} KiB saved, {_growth(g)[1] / 1024:.1f} KiB peak"
        for (lib, mode), g in df.groupby(["library", "mode"], sort=False)) + ".")
    return "\n".join(lines)


def plot(df: pd.DataFrame, path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for (lib, mode), g in df.groupby(["library", "mode"], sort=False):
        g = g.sort_values("steps")
        kw = dict(color="C0" if lib == "ndode" else "C1", ls="-" if mode == "adjoint" else "--", marker="o", ms=3,
                  label=f"{lib} {mode}")
        axes[0].loglog(g.steps, g.saved_bytes / 2**20, **kw)
        axes[1].loglog(g.steps, g.peak_rss_bytes.clip(lower=1) / 2**20, **kw)
    axes[0].set_title("bytes saved for backward")
    axes[1].set_title("peak resident memory rise (forward + backward)")
    for ax in axes:
        ax.set_xlabel("RK4 steps")
        ax.set_ylabel("MiB")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

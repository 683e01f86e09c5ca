"""Figures: pure functions of arrays or DataFrames that return a matplotlib ``Figure``.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot, no
global backend state), so they work headless, in tests and in worker processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..io import atomic_save

__all__ = ["save_figure", "plot_ode_demo"]

TRUE, LEARNED, OBS = "#222222", "#d62728", "#1f77b4"


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a figure atomically (format from the suffix); create the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight"))
    return path


def plot_ode_demo(a: dict, title: str | None = None) -> Figure:
    """True vs learned spiral: trajectories in time, the phase plane, and both vector fields.

    ``a`` holds the arrays the demo saves (``arrays/ode_demo.npz``): ``t``,
    ``y_true``, ``y_obs``, ``y_learned``, ``heldout``, ``grid``,
    ``true_field``, ``learned_field``.
    """
    t, yt, yo, yl, held = a["t"], a["y_true"], a["y_obs"], a["y_learned"], a["heldout"].astype(bool)
    mse = float(np.mean((yl[held] - yt[held]) ** 2))
    fig = Figure(figsize=(16, 4.2))
    axes = fig.subplots(1, 4)
    ax = axes[0]
    for i in range(2):
        ax.plot(t[~held], yo[~held, i], ".", ms=2, color=OBS, alpha=0.35, label="noisy samples" if i == 0 else None)
        ax.plot(t, yt[:, i], "-", lw=1.2, color=TRUE, label="true" if i == 0 else None)
        ax.plot(t, yl[:, i], "--", lw=1.2, color=LEARNED, label="learned" if i == 0 else None)
    ax.set(xlabel="t", ylabel="y₁, y₂", title="Trajectories")
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[1]
    ax.plot(yo[~held, 0], yo[~held, 1], ".", ms=2, color=OBS, alpha=0.35)
    ax.plot(yt[:, 0], yt[:, 1], "-", lw=1.2, color=TRUE, label="true")
    ax.plot(yl[:, 0], yl[:, 1], "--", lw=1.2, color=LEARNED, label="learned")
    ax.set(xlabel="y₁", ylabel="y₂", title=f"Phase portrait (held-out MSE {mse:.3g})", aspect="equal")
    ax.legend(loc="upper right", fontsize=8)
    g = a["grid"]
    for ax, key, label, y, color in ((axes[2], "true_field", "True vector field", yt, TRUE),
                                     (axes[3], "learned_field", "Learned vector field", yl, LEARNED)):
        f = a[key]
        norm = np.linalg.norm(f, axis=-1, keepdims=True)
        u = f / np.maximum(norm, 1e-12)  # directions; the colour carries the speed
        ax.quiver(g[..., 0], g[..., 1], u[..., 0], u[..., 1], np.log1p(norm[..., 0]), cmap="viridis",
                  scale=30, width=0.004)
        ax.plot(y[:, 0], y[:, 1], "-", lw=0.8, color=color, alpha=0.6)  # the trajectory of this field
        ax.set(xlabel="y₁", ylabel="y₂", title=label, aspect="equal",
               xlim=(g[..., 0].min(), g[..., 0].max()), ylim=(g[..., 1].min(), g[..., 1].max()))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

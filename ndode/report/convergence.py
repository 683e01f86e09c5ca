"""Is a learning curve still falling when training stops? One test for every experiment (issues 23 and 24).

Over a run's last ``frac`` of iterations (``step > (1 − frac)·S``, S its last recorded step) the curve is cut into
two halves at ``(1 − frac/2)·S``. ``drop`` is the mean of the first half minus the mean of the second, ``se`` its
standard error from the spread of the points in each half. A run is *flat* when ``drop ≤ max(tol, 2·se)``: the curve
no longer falls by more than the tolerance or its own noise. A rise counts as flat (no longer improving: training
longer would not lower it). The tolerance is the caller's, in the curve's units: the CNF report uses 0.01 nats of
training loss, the latent-ODE report 2 % of the final validation RMSE.

This tests the trend, not the wiggle: a (max − min) range over the window, the check this replaced for Table 2,
called a converged but noisy curve "not flat" and could not tell noise from a fall.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["FRACTION", "tail_trend", "is_flat"]

FRACTION = 0.2  # the last 20 % of training, where the issues ask the curve to be flat


def tail_trend(records: pd.DataFrame, value: str, frac: float = FRACTION) -> pd.DataFrame:
    """Per run: ``drop`` (first half's mean − second half's mean over the last ``frac``), ``se``, ``last`` (the final
    point's value) and ``n`` (points in the window).

    ``records``: columns ``run``, ``step`` and ``value``; rows with a missing value are ignored. ``drop`` is NaN when
    either half is empty; ``se`` is NaN when either half has fewer than two points.
    """
    if not 0 < frac <= 1:
        raise ValueError(f"frac={frac!r}: the window must be a fraction of the run in (0, 1]")
    missing = [c for c in ("run", "step", value) if c not in records.columns]
    if missing:
        raise KeyError(f"tail_trend needs columns run, step and {value!r}; missing {missing}")
    rows = []
    for run, g in records.groupby("run", sort=True):
        g = g.dropna(subset=[value]).sort_values("step")
        if g.empty:
            rows.append({"run": run, "drop": math.nan, "se": math.nan, "last": math.nan, "n": 0})
            continue
        end = float(g["step"].max())
        lo, mid = (1 - frac) * end, (1 - frac / 2) * end
        a = g[(g["step"] > lo) & (g["step"] <= mid)][value].astype(float)
        b = g[g["step"] > mid][value].astype(float)
        drop = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
        se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if len(a) > 1 and len(b) > 1 else math.nan
        rows.append({"run": run, "drop": drop, "se": se, "last": float(g[value].iloc[-1]), "n": len(a) + len(b)})
    return pd.DataFrame(rows, columns=["run", "drop", "se", "last", "n"])


def is_flat(drop: float, se: float, tol: float) -> bool | None:
    """``drop ≤ max(tol, 2·se)`` (None when ``drop`` is not measured; with no ``se``, against ``tol`` alone)."""
    if not np.isfinite(drop):
        return None
    return bool(drop <= tol or (np.isfinite(se) and drop <= 2 * se))

"""Benchmark 12 — step-size controllers on DETEST: NFE at equal error against torchdiffeq, dopri5.

DETEST (Hull, Enright, Fellen & Sedgwick 1972, "Comparing numerical methods for
ordinary differential equations", SIAM J. Numer. Anal. 9(4)) is the classic
non-stiff test set: 25 problems in five classes, A (single equations), B (small
systems), C (moderate systems, up to 51 equations, C5 the five outer planets),
D (Kepler orbits of eccentricity 0.1 … 0.9) and E (second-order equations), all
on ``t ∈ [0, 20]``. They are written here from the published definitions.

Each problem is solved with dopri5 at rtol = atol = 1e-3, 1e-6 and 1e-9 by ndode
under each step-size controller (``ndode.IController``, SciPy's; and
``ndode.PIController`` with Hairer's DOPRI5 coefficients and with Gustafsson's)
and by torchdiffeq. Error: the largest absolute deviation over 11 equally spaced
output times and all components from SciPy's DOP853 at rtol = atol = 1e-13. NFE:
calls of ``func``, counted. At equal error: torchdiffeq's NFE at each ndode
point's error, read off torchdiffeq's work–precision curve on that problem
(log–log interpolation between its three points, linear extrapolation past
them). The goal: total NFE ≤ 0.9× torchdiffeq's at equal error, and no problem
above 1.1×.

The robustness case is D1 at rtol = atol = 1e-2, where SciPy's RK45 controller
runs into a step-size underflow: each controller's outcome is reported.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn

import ndode

from . import peers as P
from .problems import reference_solution
from .work_precision import _loglog_at

NAME = "detest"
TOLS = (1e-3, 1e-6, 1e-9)
T_END = 20.0
N_OUT = 11
# ndode's controllers measured (name -> controller); torchdiffeq is the peer
CONTROLLERS = {
    "integral": ndode.IController(),
    "pi": ndode.PIController(),  # Hairer's DOPRI5 coefficients
    "pi_gustafsson": ndode.PIController(pcoeff=0.4, icoeff=0.3),
}
ROBUSTNESS = dict(problem="D1", tol=1e-2)
GOAL_TOTAL, GOAL_WORST = 0.9, 1.1


# --------------------------------------------------------------------------- the problems


class _Problem(nn.Module):
    y0: tuple

    def __init__(self, rhs, y0, doc):
        super().__init__()
        self.rhs, self.y0, self.__doc__ = rhs, tuple(y0), doc

    def forward(self, t, y):
        return self.rhs(t, y)


def _chain(n, diag, sub, last_sub, tri=False):
    """The linear C-class systems y' = A y as a dense matrix."""
    a = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        a[i, i] = diag(i)
        if i > 0:
            a[i, i - 1] = sub(i) if i < n - 1 else last_sub
        if tri and i < n - 1:
            a[i, i + 1] = 1.0
    return a


def _linear(a):
    return lambda t, y: a @ y


# C5: the five outer planets about the sun (k2 in AU³ per solar mass per (100 days)², as DETEST has it)
_K2 = 2.95912208286
_M0 = 1.00000597682
_M = torch.tensor([0.000954786104043, 0.000285583733151, 0.0000437273164546, 0.0000517759138449,
                   0.00000277777777778], dtype=torch.float64)
_C5_Y0 = (3.42947415189, 3.35386959711, 1.35494901715, 6.64145542550, 5.97156957878, 2.18231499728,
          11.2630437207, 14.6952576794, 6.27960525067, -30.1552268759, 1.65699966404, 1.43785752721,
          -21.1238353380, 28.4465098142, 15.3882659679,
          -0.557160570446, 0.505696783289, 0.230578543901, -0.415570776342, 0.365682722812, 0.169143213293,
          -0.325325669158, 0.189706021964, 0.0877265322780, -0.0240476254170, -0.287659532608, -0.117219543175,
          -0.176860753121, -0.216393453025, -0.0148647893090)


def _five_body(t, y):
    # y = (positions of bodies 1..5, 3 each; velocities likewise);
    # x_i'' = k2 (-(m0 + m_i) x_i / r_i³ + Σ_{j≠i} m_j ((x_j - x_i) / d_ij³ - x_j / r_j³))
    x, v = y[:15].view(5, 3), y[15:]
    r3 = x.norm(dim=1) ** 3
    diff = x.unsqueeze(0) - x.unsqueeze(1)  # [i, j] = x_j - x_i
    d3 = diff.norm(dim=2) ** 3 + torch.eye(5, dtype=y.dtype)  # the diagonal (j = i) is masked below
    pull = _M.view(1, 5, 1) * (diff / d3.unsqueeze(2) - (x / r3.unsqueeze(1)).unsqueeze(0))
    pull = pull * (1.0 - torch.eye(5, dtype=y.dtype)).unsqueeze(2)
    acc = _K2 * (-(_M0 + _M).unsqueeze(1) * x / r3.unsqueeze(1) + pull.sum(1))
    return torch.cat([v, acc.reshape(-1)])


def _orbit(e):
    def rhs(t, y):
        r3 = (y[0] ** 2 + y[1] ** 2) ** 1.5
        return torch.stack([y[2], y[3], -y[0] / r3, -y[1] / r3])

    return rhs, (1.0 - e, 0.0, 0.0, math.sqrt((1.0 + e) / (1.0 - e)))


def _b4(t, y):
    r = torch.sqrt(y[0] ** 2 + y[1] ** 2)
    return torch.stack([-y[1] - y[0] * y[2] / r, y[0] - y[1] * y[2] / r, y[0] / r])


def detest_problems() -> dict[str, _Problem]:
    """The 25 problems, name -> ``func(t, y)`` (an ``nn.Module``) with ``y0``; all on ``[0, 20]``, float64."""
    one = lambda f: (lambda t, y: f(t, y[0]).reshape(1))  # noqa: E731 - a scalar equation as a 1-vector
    e10 = [1.0] + [0.0] * 9
    specs = {
        "A1": (one(lambda t, y: -y), (1.0,), "y' = -y"),
        "A2": (one(lambda t, y: -(y**3) / 2), (1.0,), "y' = -y³/2"),
        "A3": (one(lambda t, y: y * torch.cos(t)), (1.0,), "y' = y cos t"),
        "A4": (one(lambda t, y: y / 4 * (1 - y / 20)), (1.0,), "y' = y/4 (1 - y/20), logistic"),
        "A5": (one(lambda t, y: (y - t) / (y + t)), (4.0,), "y' = (y - t)/(y + t)"),
        "B1": (lambda t, y: torch.stack([2 * (y[0] - y[0] * y[1]), -(y[1] - y[0] * y[1])]), (1.0, 3.0),
               "growth of two conflicting populations"),
        "B2": (lambda t, y: torch.stack([-y[0] + y[1], y[0] - 2 * y[1] + y[2], y[1] - y[2]]), (2.0, 0.0, 1.0),
               "linear chemical reaction"),
        "B3": (lambda t, y: torch.stack([-y[0], y[0] - y[1] ** 2, y[1] ** 2]), (1.0, 0.0, 0.0),
               "nonlinear chemical reaction"),
        "B4": (_b4, (3.0, 0.0, 0.0), "integral surface of a torus"),
        "B5": (lambda t, y: torch.stack([y[1] * y[2], -y[0] * y[2], -0.51 * y[0] * y[1]]), (0.0, 1.0, 1.0),
               "Euler's equations of a rigid body without external forces"),
        "C1": (_linear(_chain(10, lambda i: -1.0 if i < 9 else 0.0, lambda i: 1.0, 1.0)), e10,
               "radioactive decay chain, equal rates"),
        "C2": (_linear(_chain(10, lambda i: -float(i + 1) if i < 9 else 0.0, lambda i: float(i), 9.0)), e10,
               "radioactive decay chain, rates 1..9"),
        "C3": (_linear(_chain(10, lambda i: -2.0, lambda i: 1.0, 1.0, tri=True)), e10, "tridiagonal, 10 equations"),
        "C4": (_linear(_chain(51, lambda i: -2.0, lambda i: 1.0, 1.0, tri=True)), [1.0] + [0.0] * 50,
               "tridiagonal, 51 equations"),
        "C5": (_five_body, _C5_Y0, "five outer planets about the sun"),
    }
    for name, e in zip(("D1", "D2", "D3", "D4", "D5"), (0.1, 0.3, 0.5, 0.7, 0.9)):
        rhs, y0 = _orbit(e)
        specs[name] = (rhs, y0, f"Kepler orbit, eccentricity {e}")
    specs.update({
        "E1": (lambda t, y: torch.stack([y[1], -(y[1] / (t + 1) + (1 - 0.25 / (t + 1) ** 2) * y[0])]),
               (0.6713967071418030, 0.09540051444747446), "Bessel's equation of order 1/2, x = t + 1"),
        "E2": (lambda t, y: torch.stack([y[1], (1 - y[0] ** 2) * y[1] - y[0]]), (2.0, 0.0), "Van der Pol, μ = 1"),
        "E3": (lambda t, y: torch.stack([y[1], y[0] ** 3 / 6 - y[0] + 2 * torch.sin(2.78535 * t)]), (0.0, 0.0),
               "Duffing's equation, forced"),
        "E4": (lambda t, y: torch.stack([y[1], 0.032 - 0.4 * y[1] ** 2]), (30.0, 0.0), "falling body with drag"),
        "E5": (lambda t, y: torch.stack([y[1], torch.sqrt(1 + y[1] ** 2) / (25 - t)]), (0.0, 0.0),
               "pursuit curve"),
    })
    return {name: _Problem(*spec) for name, spec in specs.items()}


# --------------------------------------------------------------------------- measuring

SIZES = {
    "full": dict(problems=None, tols=TOLS, robustness=True),
    "quick": dict(problems=("A2", "B1", "C5", "D3", "E2"), tols=TOLS, robustness=True),
    "tiny": dict(problems=("A1", "D1"), tols=(1e-3, 1e-6), robustness=False),
}


def _ndode_solver(controller):
    def run(func, y0, t, tol):
        return ndode.solve(func, y0, t, rtol=tol, atol=tol, controller=controller).ys

    return run


def _solvers() -> dict:
    out = {f"ndode_{name}": _ndode_solver(c) for name, c in CONTROLLERS.items()}
    if P.available("torchdiffeq"):
        import torchdiffeq

        out["torchdiffeq"] = lambda func, y0, t, tol: torchdiffeq.odeint(func, y0, t, rtol=tol, atol=tol,
                                                                         method="dopri5")
    return out


def _counted(run, func, y0, t, tol):
    from .timing import CallCounter

    counter = CallCounter(func)
    with torch.no_grad():
        ys = run(counter, y0, t, tol)
    return ys, counter.n


def run(sizes: dict) -> pd.DataFrame:
    problems = detest_problems()
    names = sizes["problems"] or tuple(problems)
    solvers = _solvers()
    rows = []
    for name in names:
        func = problems[name]
        y0 = torch.tensor(func.y0, dtype=torch.float64)
        t = torch.linspace(0.0, T_END, N_OUT, dtype=torch.float64)
        ref = reference_solution(func, y0, t)
        for tol in sizes["tols"]:
            for solver, fn in solvers.items():
                ys, nfe = _counted(fn, func, y0, t, tol)
                rows.append(dict(case="work_precision", problem=name, solver=solver, tol=tol, nfe=nfe,
                                 error=float((ys - ref).abs().max()), outcome="completed", t_reached=T_END))
    if sizes["robustness"]:
        name, tol = ROBUSTNESS["problem"], ROBUSTNESS["tol"]
        func = problems[name]
        y0 = torch.tensor(func.y0, dtype=torch.float64)
        t = torch.linspace(0.0, T_END, N_OUT, dtype=torch.float64)
        ref = reference_solution(func, y0, t)
        for solver, fn in solvers.items():
            try:
                ys, nfe = _counted(fn, func, y0, t, tol)
                row = dict(nfe=nfe, error=float((ys - ref).abs().max()), outcome="completed", t_reached=T_END)
            except (ndode.SolverError, AssertionError, RuntimeError) as e:
                where = str(e).split(" at t=")[1].split(",")[0] if " at t=" in str(e) else "nan"
                row = dict(nfe=np.nan, error=np.nan, outcome=str(e).split(" at t=")[0][:60], t_reached=float(where))
            rows.append(dict(case="robustness", problem=name, solver=solver, tol=tol, **row))
    return pd.DataFrame(rows)


def equal_error_table(df: pd.DataFrame, peer: str = "torchdiffeq") -> pd.DataFrame:
    """Per ndode point: ``peer``'s NFE at that point's error (on ``peer``'s curve for the problem)."""
    wp = df[df.case == "work_precision"]
    rows = []
    for problem, g in wp.groupby("problem", sort=False):
        other = g[g.solver == peer].sort_values("tol")
        if len(other) == 0:
            continue
        for solver, h in g[g.solver != peer].groupby("solver", sort=False):
            for _, r in h.iterrows():
                same = other[other.tol == r.tol]
                at = _loglog_at(np.maximum(other.error.values, 1e-300), other.nfe.values, max(r.error, 1e-300))
                rows.append(dict(problem=problem, solver=solver, tol=r.tol, nfe=r.nfe, error=r.error,
                                 peer_nfe=int(same.nfe.iloc[0]), peer_error=float(same.error.iloc[0]),
                                 peer_nfe_at_error=at))
    return pd.DataFrame(rows)


def controller_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per ndode controller: total NFE ÷ torchdiffeq's at equal error, the worst problem, equal-tolerance ratios."""
    eq = equal_error_table(df)
    rows = []
    for solver, g in eq.groupby("solver", sort=False):
        per = g.groupby("problem", sort=False).apply(lambda h: h.nfe.sum() / h.peer_nfe_at_error.sum(),
                                                     include_groups=False)
        rows.append(dict(solver=solver, total_ratio_equal_error=g.nfe.sum() / g.peer_nfe_at_error.sum(),
                         worst_problem=per.idxmax(), worst_ratio=per.max(),
                         problems_above_goal=int((per > GOAL_WORST).sum()),
                         total_ratio_equal_tol=g.nfe.sum() / g.peer_nfe.sum(),
                         error_ratio_equal_tol_median=float(np.median(g.error / g.peer_error))))
    return pd.DataFrame(rows)


def verdicts(df: pd.DataFrame) -> list[tuple[str, bool]]:
    out = []
    for _, r in controller_table(df).iterrows():
        ok = r.total_ratio_equal_error <= GOAL_TOTAL and r.worst_ratio <= GOAL_WORST
        out.append((f"{r.solver}: total NFE ÷ torchdiffeq's at equal error {r.total_ratio_equal_error:.3f} "
                    f"(goal ≤ {GOAL_TOTAL}), worst problem {r.worst_problem} at {r.worst_ratio:.2f} "
                    f"(goal ≤ {GOAL_WORST})", ok))
    return out


def summary(df: pd.DataFrame) -> str:
    parts = [f"{r.solver} {r.total_ratio_equal_error:.3f}× (worst {r.worst_problem} {r.worst_ratio:.2f}×)"
             for _, r in controller_table(df).iterrows()]
    rob = df[df.case == "robustness"]
    if len(rob):
        parts.append("D1 at 1e-2: " + ", ".join(
            f"{r.solver} {r.outcome if r.outcome != 'completed' else f'completed ({int(r.nfe)} NFE)'}"
            for _, r in rob.iterrows()))
    return "DETEST dopri5, NFE ÷ torchdiffeq at equal error: " + " | ".join(parts)


def markdown(df: pd.DataFrame) -> str:
    ct = controller_table(df)
    out = ["| controller | total NFE ÷ torchdiffeq at equal error | worst problem | problems > 1.1× "
           "| total NFE ÷ torchdiffeq at equal tol | median error ÷ torchdiffeq's at equal tol |",
           "| --- | ---: | --- | ---: | ---: | ---: |"]
    for _, r in ct.iterrows():
        out.append(f"| {r.solver} | {r.total_ratio_equal_error:.3f} | {r.worst_problem} ({r.worst_ratio:.2f}) "
                   f"| {r.problems_above_goal} | {r.total_ratio_equal_tol:.3f} | {r.error_ratio_equal_tol_median:.2f} |")
    eq = equal_error_table(df)
    if len(eq):
        per = eq.groupby(["problem", "solver"], sort=False).apply(
            lambda h: h.nfe.sum() / h.peer_nfe_at_error.sum(), include_groups=False).unstack()
        solvers = list(dict.fromkeys(eq.solver))
        out += ["", "Per problem, NFE ÷ torchdiffeq's at equal error (sum over the three tolerances):", "",
                "| problem | " + " | ".join(solvers) + " |", "| --- |" + " ---: |" * len(solvers)]
        for problem, r in per.iterrows():
            out.append(f"| {problem} | " + " | ".join(f"{r[s]:.2f}" for s in solvers) + " |")
    rob = df[df.case == "robustness"]
    if len(rob):
        out += ["", f"Robustness, {ROBUSTNESS['problem']} at rtol = atol = {ROBUSTNESS['tol']:g}:", "",
                "| solver | outcome | t reached | NFE | max error |", "| --- | --- | ---: | ---: | ---: |"]
        for _, r in rob.iterrows():
            nfe = "—" if pd.isna(r.nfe) else f"{int(r.nfe)}"
            err = "—" if pd.isna(r.error) else f"{r.error:.2e}"
            out.append(f"| {r.solver} | {r.outcome} | {r.t_reached:.3g} | {nfe} | {err} |")
    return "\n".join(out)

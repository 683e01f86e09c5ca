"""``method="scipy_solver"``: SciPy's ``solve_ivp`` behind ndode's call (torchdiffeq's ``scipy_solver``).

``options={"solver": "RK45" | "RK23" | "DOP853" | "Radau" | "BDF" | "LSODA"}``
(default ``"LSODA"``, as torchdiffeq), plus ``min_step`` (LSODA only) and
``max_step``. The state goes through NumPy in float64 and comes back in its
own dtype; nothing is differentiated through SciPy, so gradients need
``odeint_adjoint``, whose backward solve then uses SciPy too, interval by
interval between output times. Meant for stiff problems (``Radau``, ``BDF``,
``LSODA``); every call crosses to the host.
"""

from __future__ import annotations

import math
import warnings

import torch

from .ode.types import SolverError

SCIPY_SOLVERS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
SCIPY_OPTIONS = ("solver", "min_step", "max_step")


class ScipyMethod:
    """``scipy_solver``'s entry in the method registry (``ndode.ode.methods``): SciPy chooses the steps."""

    name = "scipy_solver"
    adaptive = True
    own_steps = False  # no step-size controller, no shared data-parallel norm, no recorded steps
    differentiable = False  # the state crosses to NumPy: gradients only through the adjoint

    def __repr__(self):
        return "ScipyMethod()"

    def check_options(self, options, arg="options", also=()) -> dict:
        return check_scipy_options(options, arg, also)

    def integrator(self, func, rtol, atol, options, stats, dtype, device, *, norm=None, phase="", callbacks=None,
                   unpack=None):
        if callbacks is not None:
            warnings.warn("method 'scipy_solver' calls no step callbacks (SciPy takes the steps)", stacklevel=5)
        return ScipyIntegrator(func, rtol, atol, options, stats, dtype, device, phase)


SCIPY_METHOD = ScipyMethod()


def check_scipy_options(options, arg, also=()) -> dict:
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"{arg} must be a dict or None, got {type(options).__name__}")
    unknown = sorted(set(options) - set(SCIPY_OPTIONS) - set(also))
    if unknown:
        raise ValueError(f"unknown {arg} {unknown} for method 'scipy_solver'; allowed: {', '.join(SCIPY_OPTIONS)}")
    out = {k: v for k, v in options.items() if v is not None}
    out.setdefault("solver", "LSODA")
    if out["solver"] not in SCIPY_SOLVERS:
        raise ValueError(f"{arg}['solver'] must be one of {', '.join(SCIPY_SOLVERS)}, got {out['solver']!r}")
    for key in ("min_step", "max_step"):
        if key in out:
            v = float(out[key])
            if math.isnan(v) or v < 0 or (key == "max_step" and v == 0):
                raise ValueError(f"{arg}[{key!r}] must be a number {'>= 0' if key == 'min_step' else '> 0'}, got {out[key]!r}")
            out[key] = v
    return out


class ScipyIntegrator:
    """The integrator interface (``solve_adaptive``) on ``scipy.integrate.solve_ivp``."""

    def __init__(self, func, rtol, atol, options, stats, dtype, device, phase=""):
        self.func, self.rtol, self.atol, self.opts, self.stats = func, rtol, atol, options, stats
        self.dtype, self.device, self.phase = dtype, device, phase

    def _solve(self, y, t0, t1, t_eval=None):
        from scipy.integrate import solve_ivp

        shape = y.shape

        def fun(t, x):
            self.stats.nfe += 1
            with torch.no_grad():
                yt = torch.as_tensor(x, device=self.device).to(self.dtype).view(shape)
                out = self.func(torch.scalar_tensor(t, dtype=self.dtype, device=self.device), yt)
            return out.detach().to(torch.float64).cpu().numpy().reshape(-1)

        kw = {}
        if "max_step" in self.opts:
            kw["max_step"] = self.opts["max_step"]
        if "min_step" in self.opts and self.opts["solver"] == "LSODA":
            kw["min_step"] = self.opts["min_step"]
        x0 = y.detach().to(torch.float64).cpu().numpy().reshape(-1)
        sol = solve_ivp(fun, (t0, t1), x0, method=self.opts["solver"], t_eval=t_eval, rtol=self.rtol, atol=self.atol, **kw)
        if sol.status != 0:
            where = "scipy_solver " + self.opts["solver"] + (f", {self.phase}" if self.phase else "")
            raise SolverError(f"SciPy's solve_ivp failed between t={t0!r} and t={t1!r} ({where}): {sol.message}")
        self.stats.n_accepted += max(len(sol.t) - 1, 0) if t_eval is None else 0
        return [torch.as_tensor(col, device=self.device).to(self.dtype).view(shape) for col in sol.y.T]

    def check_y0(self, y0):
        if not bool(torch.isfinite(y0).all()):
            raise ValueError("y0 contains non-finite values (nan or inf)")

    def solve_adaptive(self, y0, times, on_output=None, event=None, on_step=None):
        if on_step is not None:
            raise ValueError("method 'scipy_solver' does not report its steps (SciPy takes them)")
        if event is not None:
            raise ValueError("method 'scipy_solver' does not solve until an event; use an ndode method")
        if on_output is None:
            return [y0] + self._solve(y0, times[0], times[-1], t_eval=times)[1:]
        ys, y = [y0], y0
        for i in range(1, len(times)):
            y = self._solve(y, times[i - 1], times[i])[-1]
            jumped = on_output(i, y)
            y = y if jumped is None else jumped
            ys.append(y)
        return ys

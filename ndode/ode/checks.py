"""Validated input: tolerances, times and the Runge–Kutta methods' options, with errors that name the argument,
the value and what is allowed."""

from __future__ import annotations

import math

import torch

from ..tableau import ButcherTableau
from .controller import IController, PIController, StepController, check_controller

# options of a solve on a grid (any method; the only kind a fixed-step method has)
FIXED_OPTIONS = ("step_size", "grid_constructor", "perturb", "interp")
# options of an error-controlled solve (plus FIXED_OPTIONS, which turn an adaptive tableau into a fixed grid)
ADAPTIVE_OPTIONS = ("first_step", "max_num_steps", "controller", "safety", "min_factor", "max_factor", "min_step",
                    "max_step", "jump_t", "step_t", "norm") + FIXED_OPTIONS
DEFAULT_MAX_NUM_STEPS = 1_000_000
# the PI controller: fewer evaluations than the integral one (SciPy's RK45's) at equal error on DETEST, 0.909x
# torchdiffeq's total against 0.937x (benchmarks/detest.py, docs/solver.md)
DEFAULT_CONTROLLER: StepController = PIController()
# the integral controller's settings, accepted as options for torchdiffeq's sake (they build an IController)
I_CONTROLLER_OPTIONS = ("safety", "min_factor", "max_factor")


def _check_tol(name, value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a non-negative finite number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return value


def _host_times(arg, key, value) -> list[float]:
    """A 1-D tensor or sequence of finite times as sorted Python floats (jump_t, step_t)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().reshape(-1).double().tolist()
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value)
    if not ok:
        raise ValueError(f"{arg}[{key!r}] must be a 1-D tensor or list of finite times, got {value!r}")
    out = sorted({float(x) for x in value})
    return out


def _check_options(options, tab: ButcherTableau, arg="options", also=()) -> dict:
    """Validated solver options for ``tab``; ``also`` names options the caller has taken out (listed as allowed).

    A solve on a grid (a fixed-step method, or ``step_size``/``grid_constructor``
    given) always has the key ``step_size`` in the result (``None``: the grid
    is the output times, as torchdiffeq's fixed-grid solvers).
    """
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"{arg} must be a dict or None, got {type(options).__name__}")
    allowed = (ADAPTIVE_OPTIONS if tab.adaptive else FIXED_OPTIONS) + tuple(also)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        kind = "adaptive" if tab.adaptive else "fixed-step"
        raise ValueError(
            f"unknown {arg} {unknown} for {kind} method {tab.name!r}; allowed: {', '.join(allowed)}"
        )
    out = {k: v for k, v in options.items() if v is not None or k == "norm"}

    def positive(key, integer=False, lo=0.0, hi=math.inf, closed_hi=False, closed_lo=False):
        v = out[key]
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and not math.isnan(v)
        ok = ok and (v >= lo if closed_lo else v > lo) and (v <= hi if closed_hi else v < hi)
        if integer:
            ok = ok and float(v).is_integer()
        if not ok:
            rng = (f"in {'[' if closed_lo else '('}{lo}, {hi}{']' if closed_hi else ')'}" if hi != math.inf
                   else f"{'>=' if closed_lo else '>'} {lo}")
            raise ValueError(f"{arg}[{key!r}] must be {'an integer' if integer else 'a finite number'} {rng}, got {out[key]!r}")
        out[key] = int(v) if integer else float(v)

    grid = not tab.adaptive or "step_size" in out or "grid_constructor" in out
    if grid:
        if "step_size" in out and "grid_constructor" in out:
            raise ValueError(f"{arg}['step_size'] and {arg}['grid_constructor'] both given; pass one or the other")
        if tab.adaptive:
            # an adaptive tableau run on a fixed grid (e.g. RK-Net with dopri5 steps, order studies)
            clash = sorted(set(out) - set(FIXED_OPTIONS) - set(also))
            if clash:
                raise ValueError(f"{arg} {clash} do not apply with {arg}['step_size'] or {arg}['grid_constructor'] "
                                 f"(a fixed-grid solve); pass one or the other")
        if "step_size" in out:
            positive("step_size")
        else:
            out["step_size"] = None  # the grid is t itself (or the grid_constructor's)
        if "grid_constructor" in out and not callable(out["grid_constructor"]):
            raise TypeError(f"{arg}['grid_constructor'] must be callable as grid_constructor(func, y0, t), "
                            f"got {type(out['grid_constructor']).__name__}")
        if not isinstance(out.get("perturb", False), bool):
            raise TypeError(f"{arg}['perturb'] must be True or False, got {out['perturb']!r}")
        if not out.get("perturb", False):
            out.pop("perturb", None)
        if out.get("interp", "linear") not in ("linear", "cubic"):
            raise ValueError(f"{arg}['interp'] must be 'linear' or 'cubic', got {out['interp']!r}")
        out.pop("interp", None)  # output times are grid points: nothing is interpolated
    else:
        for key in FIXED_OPTIONS:
            if out.pop(key, None) is not None:
                raise ValueError(f"{arg}[{key!r}] applies to a fixed-grid solve only (give step_size or grid_constructor)")
        if out.get("first_step") is not None:
            positive("first_step")
        else:
            out.pop("first_step", None)
        if "max_num_steps" in out:
            positive("max_num_steps", integer=True)
        if "safety" in out:
            positive("safety", hi=1.0, closed_hi=True)
        if "min_factor" in out:
            positive("min_factor", hi=1.0)
        if "max_factor" in out:
            positive("max_factor", lo=1.0)
        legacy = {k: out.pop(k) for k in I_CONTROLLER_OPTIONS if k in out}
        if "controller" in out:
            if legacy:
                raise ValueError(f"{arg} {sorted(legacy)} and {arg}['controller'] both given; set them on the "
                                 f"controller, e.g. ndode.IController(safety=...)")
            out["controller"] = check_controller(out["controller"], f"{arg}['controller']")
        else:
            out["controller"] = IController(**legacy) if legacy else DEFAULT_CONTROLLER
        if "min_step" in out:
            positive("min_step", closed_lo=True)
            if out["min_step"] == 0:
                del out["min_step"]
        if "max_step" in out:
            positive("max_step", hi=math.inf, closed_hi=True)
            if out["max_step"] == math.inf:
                del out["max_step"]
        if out.get("min_step", 0.0) > out.get("max_step", math.inf):
            raise ValueError(f"{arg}['min_step']={out['min_step']!r} exceeds {arg}['max_step']={out['max_step']!r}")
        for key in ("jump_t", "step_t"):
            if key in out:
                out[key] = _host_times(arg, key, out[key])
        if set(out.get("jump_t", ())) & set(out.get("step_t", ())):
            raise ValueError(f"{arg}['jump_t'] and {arg}['step_t'] share times; each time belongs in one of them")
        if "norm" in out and "norm" not in also:
            if not callable(out["norm"]):
                raise TypeError(f"{arg}['norm'] must be callable (a norm of the scaled error, a tensor or a tuple "
                                f"like y0, returning a 0-dim tensor), got {out['norm']!r}")
    return out


def _check_t(t) -> list[float]:
    """The times as Python floats: read back from a tensor (one sync on a GPU), or taken as given."""
    if isinstance(t, torch.Tensor):
        if t.ndim != 1 or t.numel() < 1:
            raise ValueError(f"t must be a 1-D tensor with at least 1 element, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"t must have a floating dtype, got {t.dtype}")
        times = t.detach().double().tolist()
    elif (isinstance(t, (tuple, list)) and len(t) > 0
          and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in t)):
        times = [float(x) for x in t]
    else:
        raise TypeError(f"t must be a 1-D torch.Tensor of times or a non-empty list of Python floats, "
                        f"got {type(t).__name__}")
    if not all(math.isfinite(x) for x in times):
        raise ValueError(f"t must be finite, got {times}")
    if len(times) > 1:
        d = [b - a for a, b in zip(times, times[1:])]
        if not (all(x > 0 for x in d) or all(x < 0 for x in d)):
            i = next(i for i, x in enumerate(d) if x == 0 or (x > 0) != (d[0] > 0))
            raise ValueError(
                "t must be strictly increasing or strictly decreasing; "
                f"t[{i}]={times[i]!r} and t[{i + 1}]={times[i + 1]!r} break that"
            )
    return times

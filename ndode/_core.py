"""The solver core shared by :func:`ndode.solve` and the adjoint: checks, packing, the integrator, the plan.

Both ``ndode.solver`` (the entry points) and ``ndode.adjoint`` import this
module; it imports neither, so the adjoint depends on the core and never the
reverse.

Design notes (why the loop looks the way it does):

* Times and step sizes live on the host as Python floats. An adaptive solver
  must decide accept/reject on the host anyway, so each attempted step costs
  exactly one synchronisation (reading the error norm), the automatic initial
  step one more, and nothing else: the finiteness check of ``y0`` rides on the
  first of those reads, and times given as Python floats are never read back
  from the device. Fixed-step solves synchronise once per output time (a
  finiteness check).
* ``func`` is called directly; the loop counts evaluations itself, so
  statistics need no wrapper around ``func``. Tuple states are the one
  exception: they are packed into one flat tensor and ``func`` is adapted.
* Output times do not force steps in adaptive solves: values between steps
  come from the method's dense output (a 4th-order continuous extension for
  ``dopri5`` and ``tsit5``, 3rd order for ``bosh3``).
* The step-size controller follows Hairer, Nørsett & Wanner (I, §II.4) as
  SciPy's ``RK45`` does (safety 0.9, growth ≤ 10, shrink ≥ 0.2, no growth right
  after a rejection, RMS norm of the error scaled by ``atol + rtol·max(|y|,|y_new|)``,
  automatic initial step), so evaluation counts are comparable with SciPy's.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from .controller import IController, StepController, check_controller
from .scipy_solver import SCIPY_METHOD, ScipyIntegrator, check_scipy_options
from .tableau import TABLEAUS, ButcherTableau

__all__ = ["Solution", "SolverStats", "SolverError", "Adjoint", "METHODS"]

METHODS = tuple(TABLEAUS)
# options of a solve on a grid (any method; the only kind a fixed-step method has)
FIXED_OPTIONS = ("step_size", "grid_constructor", "perturb", "interp")
# options of an error-controlled solve (plus FIXED_OPTIONS, which turn an adaptive tableau into a fixed grid)
ADAPTIVE_OPTIONS = ("first_step", "max_num_steps", "controller", "safety", "min_factor", "max_factor", "min_step", "max_step",
                    "jump_t", "step_t", "norm") + FIXED_OPTIONS
DEFAULT_MAX_NUM_STEPS = 1_000_000
# SciPy's RK45 controller: measured against the PI controller on DETEST (benchmarks/detest.py, docs/solver.md)
DEFAULT_CONTROLLER: StepController = IController()
# the integral controller's settings, accepted as options for torchdiffeq's sake (they build an IController)
I_CONTROLLER_OPTIONS = ("safety", "min_factor", "max_factor")
# A step that would end this many ulps (or fewer) short of an output time ends on it. More than the
# underflow threshold (10 ulps of t), so no sliver below it can remain.
SNAP_ULPS = 16


class SolverError(RuntimeError):
    """The solve could not continue (step-size underflow, non-finite state, step budget)."""


@dataclass
class SolverStats:
    """Work done by one solve. ``*_backward`` are filled in by the adjoint's backward pass."""

    nfe: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    nfe_backward: int | None = None
    n_accepted_backward: int | None = None
    n_rejected_backward: int | None = None

    @property
    def n_steps(self) -> int:
        return self.n_accepted + self.n_rejected


@dataclass
class Solution:
    """Result of :func:`solve`: ``ys`` shaped ``[len(t), *y0.shape]`` (a tuple for tuple states)."""

    ys: torch.Tensor | tuple[torch.Tensor, ...]
    ts: torch.Tensor
    stats: SolverStats = field(default_factory=SolverStats)


# --------------------------------------------------------------------------- validation


def _check_method(method, arg="method") -> ButcherTableau:
    if method == SCIPY_METHOD.name:
        return SCIPY_METHOD  # SciPy's solve_ivp (ndode.scipy_solver), not a tableau
    if not isinstance(method, str) or method not in TABLEAUS:
        raise ValueError(f"unknown {arg} {method!r}; known methods: {', '.join(METHODS)}, {SCIPY_METHOD.name}")
    return TABLEAUS[method]


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
    if tab is SCIPY_METHOD:
        return check_scipy_options(options, arg, also)
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


class _Packing:
    """How a tensor or a tuple of tensors maps to the single tensor the loop integrates."""

    def __init__(self, y0):
        if isinstance(y0, torch.Tensor):
            self.is_tuple = False
            self.shapes = (y0.shape,)
            tensors = (y0,)
        elif isinstance(y0, (tuple, list)) and len(y0) > 0 and all(isinstance(x, torch.Tensor) for x in y0):
            self.is_tuple = True
            self.shapes = tuple(x.shape for x in y0)
            tensors = tuple(y0)
        else:
            raise TypeError(f"y0 must be a tensor or a non-empty tuple of tensors, got {type(y0).__name__}")
        dtypes = {x.dtype for x in tensors}
        devices = {x.device for x in tensors}
        if len(dtypes) > 1 or len(devices) > 1:
            raise TypeError(f"all tensors of a tuple y0 must share dtype and device, got {dtypes} / {devices}")
        self.dtype, self.device = tensors[0].dtype, tensors[0].device
        if not tensors[0].is_floating_point():
            raise TypeError(f"y0 must have a floating dtype (float32 or float64), got {self.dtype}")
        self.sizes = tuple(math.prod(s) for s in self.shapes)
        # the finiteness of y0 is checked by the integrator, on its first read from the device (no extra sync)

    def pack(self, y):
        if not self.is_tuple:
            return y
        return torch.cat([x.reshape(-1) for x in y])

    def unpack(self, y):
        if not self.is_tuple:
            return y
        return tuple(p.view(s) for p, s in zip(y.split(self.sizes), self.shapes))

    def unpack_stack(self, ys):
        """[n, total] -> tuple of [n, *shape_i]."""
        if not self.is_tuple:
            return ys
        n = ys.shape[0]
        return tuple(p.reshape(n, *s) for p, s in zip(ys.split(self.sizes, dim=1), self.shapes))

    def wrap(self, func):
        if not self.is_tuple:
            return func
        unpack, pack, check = self.unpack, self.pack, self.check_output
        checked = False

        def packed(t, y):
            nonlocal checked
            out = func(t, unpack(y))
            if not checked:  # before packing: a component of the right size but the wrong shape would scramble y
                check(out, t)
                checked = True
            return pack(out)

        return packed

    def check_output(self, out, t):
        """func's output for a tuple state: a tuple of tensors with y0's shapes and dtype, component by component."""
        n = len(self.shapes)
        if not isinstance(out, (tuple, list)) or len(out) != n:
            got = type(out).__name__ + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
            raise TypeError(f"func must return a tuple of {n} tensors like y0; at t={float(t)!r} it returned a {got}")
        for i, (o, shape) in enumerate(zip(out, self.shapes)):
            if not isinstance(o, torch.Tensor):
                raise TypeError(f"component {i} of func's output at t={float(t)!r} is a {type(o).__name__}, not a tensor")
            if o.shape != shape:
                raise ValueError(f"component {i} of func's output has shape {tuple(o.shape)} at t={float(t)!r}, "
                                 f"but y0[{i}] has shape {tuple(shape)}")
            if o.dtype != self.dtype and not _autocast(o, self.dtype):
                raise TypeError(f"component {i} of func's output has dtype {o.dtype} at t={float(t)!r}, "
                                f"but y0[{i}] has dtype {self.dtype}")

    def rms_norm(self, reduce=None):
        """Error norm: RMS for a tensor (of any shape, 0-dim included); for tuples, the largest RMS over
        components (as torchdiffeq). ``reduce``: see :func:`solve`'s ``norm_reduce``."""
        if not self.is_tuple:
            inv = 1.0 / math.sqrt(max(self.sizes[0], 1))
            if reduce is None:
                return lambda r: torch.linalg.vector_norm(r) * inv
            return lambda r: reduce(torch.linalg.vector_norm(r) * inv)
        return _max_rms_norm(self.sizes, reduce)


def _max_rms_norm(sizes, reduce=None):
    """The largest RMS over the consecutive blocks of ``sizes`` entries of a flat tensor (torchdiffeq's mixed
    norm). Entries past the blocks do not count (the adjoint's seminorm leaves its parameter adjoints out).
    ``reduce`` (data-parallel training) turns this process's RMS of each block into the RMS over every
    process's data before the largest is taken."""
    total = sum(sizes)
    invs = [1.0 / math.sqrt(max(s, 1)) for s in sizes]
    if len(sizes) == 1:
        inv = invs[0]
        if reduce is None:
            return lambda r: torch.linalg.vector_norm(r[:total]) * inv
        return lambda r: reduce(torch.linalg.vector_norm(r[:total]) * inv)

    def norm(r):
        n = torch.stack([torch.linalg.vector_norm(p) * i for p, i in zip(r[:total].split(sizes), invs)])
        return (n if reduce is None else reduce(n)).max()

    return norm


def _autocast(out, dtype) -> bool:
    """Whether a func output of a lower precision than the state comes from torch.autocast (then it is cast)."""
    return out.is_floating_point() and dtype.is_floating_point and torch.is_autocast_enabled(out.device.type)


def _check_func_output(f, y, where) -> bool:
    """Check func's (packed) output against the state; returns whether outputs must be cast (autocast)."""
    if not isinstance(f, torch.Tensor):
        raise TypeError(f"func must return a tensor (or a tuple like y0); at {where} it returned {type(f).__name__}")
    if f.shape != y.shape:
        raise ValueError(f"func returned shape {tuple(f.shape)} at {where}, but the state has shape {tuple(y.shape)}")
    if f.dtype != y.dtype:
        # Under torch.autocast a func computes in bf16/fp16 while the state stays in its own dtype:
        # the output is cast to the state's dtype. Without autocast a different dtype is a mistake.
        if _autocast(f, y.dtype):
            return True
        raise TypeError(f"func returned dtype {f.dtype} at {where}, but the state has dtype {y.dtype}")
    return False


# --------------------------------------------------------------------------- the loop


def _combine(y, h, coeffs, ks):
    """y + h Σ coeffs_j k_j, skipping zero coefficients; one kernel per non-zero term."""
    out = y
    for cj, kj in zip(coeffs, ks):
        if cj != 0.0:
            out = torch.add(out, kj, alpha=h * cj)
    return out


def _lincomb(h, coeffs, ks):
    out = None
    for cj, kj in zip(coeffs, ks):
        if cj != 0.0:
            out = kj * (h * cj) if out is None else torch.add(out, kj, alpha=h * cj)
    return out


class _Integrator:
    """One solve over a list of host times. Holds no tensors between solves.

    ``callbacks`` (``(step, accept, reject)``, each ``None`` or called as
    ``cb(t, y, dt)``) and the options ``perturb``, ``jump_t``, ``step_t``,
    ``min_step``, ``max_step`` and ``grid_constructor`` follow torchdiffeq's
    meaning; each is a branch on ``None`` when unused, so they cost nothing then.
    """

    def __init__(self, func, tab: ButcherTableau, rtol, atol, options, stats: SolverStats, norm, dtype, device,
                 phase="", callbacks=None, unpack=None):
        self.func = func
        self.phase = phase
        self.tab = tab
        self.rtol, self.atol = rtol, atol
        self.opts = options
        self.stats = stats
        self.norm = norm
        self.dtype, self.device = dtype, device
        self.controller = options.get("controller", DEFAULT_CONTROLLER)
        self.max_num_steps = options.get("max_num_steps", DEFAULT_MAX_NUM_STEPS)
        self.min_step = options.get("min_step", 0.0)
        self.max_step = options.get("max_step", math.inf)
        cb = callbacks if callbacks is not None and any(c is not None for c in callbacks) else None
        self.cb_step, self.cb_accept, self.cb_reject = cb if cb is not None else (None, None, None)
        self.unpack = unpack if unpack is not None else (lambda y: y)
        self._checked = False
        self._cast = False
        self._last_t, self._last_tt = None, None
        # on_step(t, h, y, outs), if set, sees every accepted step: its start t and size h, the state y it
        # started from, and the outputs it produced as (index, theta) pairs, theta=None for the step's end
        # state, else the dense output at t + theta*h (the checkpointed adjoint records the steps with it)
        self.on_step = None

    def _t(self, t):
        # scalar_tensor: a fill, not a host-to-device copy (no sync on CUDA), ~17% faster at batch 1 than
        # torch.tensor. Stages at equal times (rk4's two midpoints, dopri5's last two) share one tensor.
        if t != self._last_t:
            self._last_t, self._last_tt = t, torch.scalar_tensor(t, dtype=self.dtype, device=self.device)
        return self._last_tt

    def _nudged(self, t, toward):
        """``t`` moved one ulp (of the state's dtype) toward ``toward``: one side of a discontinuity (perturb)."""
        tt = torch.scalar_tensor(t, dtype=self.dtype, device=self.device)
        return torch.nextafter(tt, torch.scalar_tensor(toward, dtype=self.dtype, device=self.device))

    def _callback(self, cb, t, y, h):
        cb(torch.scalar_tensor(t, dtype=self.dtype, device=self.device), self.unpack(y),
           torch.scalar_tensor(h, dtype=self.dtype, device=self.device))

    def f(self, t, y, tt=None):
        self.stats.nfe += 1
        out = self.func(self._t(t) if tt is None else tt, y)
        if not self._checked:
            self._cast = _check_func_output(out, y, f"t={t!r}")
            self._checked = True
        return out.to(self.dtype) if self._cast else out

    def check_y0(self, y0):
        """Raise if y0 is not finite. Called only where a read from the device already came back non-finite."""
        if not bool(torch.isfinite(y0).all()):
            raise ValueError("y0 contains non-finite values (nan or inf)")

    def _fail(self, what, t, h):
        where = f"method {self.tab.name!r}" + (f", {self.phase}" if self.phase else "")
        raise SolverError(f"{what} at t={t!r}, dt={h!r} ({where})")

    def step(self, t, y, h, k0, t_end=None):
        """One Runge–Kutta step; returns (y_new, stages). ``t_end`` (a tensor): the time at which stages with
        c = 1 are evaluated instead of ``t + h`` (the near side of a discontinuity)."""
        tab = self.tab
        ks = [k0]
        yi = y
        for i in range(1, tab.stages):
            yi = _combine(y, h, tab.a[i], ks)
            ks.append(self.f(t + tab.c[i] * h, yi, t_end if t_end is not None and tab.c[i] == 1.0 else None))
        # FSAL: the last stage was evaluated at y_new itself
        y_new = yi if tab.fsal else _combine(y, h, tab.b, ks)
        return y_new, ks

    def interpolate(self, y, h, ks, theta):
        return _combine(y, h, self.tab.dense_weights(theta), ks)

    def interpolate_many(self, y, h, ks, thetas):
        """``[len(thetas), *y.shape]``: the dense output at several points of one step in one contraction
        (a solve with thousands of output times, such as a batch of event times, would otherwise pay a few
        kernels per output)."""
        w = torch.tensor([self.tab.dense_weights(th) for th in thetas], dtype=y.dtype).to(y.device, non_blocking=True)
        return torch.tensordot(w * h, torch.stack(ks), dims=1).add_(y)

    def _stepper(self, t, y, h, ks, y_new, f1):
        """y at a time inside the step just taken: the tableau's dense output, else a cubic Hermite
        interpolant through (y, k0) and (y_new, f1) (``f1()`` gives f at the step's end)."""
        if self.tab.dense is not None:
            return lambda s: self.interpolate(y, h, ks, (s - t) / h)

        def hermite(s):
            th = (s - t) / h
            return _combine(y, h, (th - 2 * th**2 + th**3, th**3 - th**2), (ks[0], f1())).add(
                y_new - y, alpha=3 * th**2 - 2 * th**3)

        return hermite

    # ---- fixed grid
    def _grid(self, y0, times):
        """The step end points between consecutive output times: a list of lists of host floats."""
        step_size = self.opts.get("step_size")
        gc = self.opts.get("grid_constructor")
        if gc is not None:
            grid = gc(self.func, self.unpack(y0), torch.tensor(times, dtype=torch.float64))
            grid = _check_t(grid)
            if grid[0] != times[0] or grid[-1] != times[-1]:
                raise ValueError(f"grid_constructor must return a grid from t[0]={times[0]!r} to t[-1]={times[-1]!r}, "
                                 f"got one from {grid[0]!r} to {grid[-1]!r}")
            # output times join the grid, so they are hit exactly (torchdiffeq interpolates instead)
            d = 1.0 if times[-1] > times[0] else -1.0
            out, j = [], 1
            for i in range(1, len(times)):
                seg = []
                while j < len(grid) and d * (grid[j] - times[i]) < 0:
                    if d * (grid[j] - times[i - 1]) > 0:
                        seg.append(grid[j])
                    j += 1
                out.append(seg + [times[i]])
            return out
        out = []
        if not math.isfinite(times[-1]):  # an event solve: steps of step_size until the event says stop
            if step_size is None:
                raise ValueError("a fixed-grid solve until an event needs options={'step_size': h}")
            h = math.copysign(step_size, times[-1])
            return [(times[0] + j * h for j in itertools.count(1))]
        for i in range(1, len(times)):
            ta, tb = times[i - 1], times[i]
            n = 1 if step_size is None else max(1, math.ceil(abs(tb - ta) / step_size * (1 - 1e-12)))
            h = (tb - ta) / n
            out.append([ta + j * h for j in range(1, n)] + [tb])
        return out

    def solve_fixed(self, y0, times, on_output=None, event=None):
        """Step on the grid (``step_size``: each interval between output times cut into equal steps; none: the
        output times themselves, as torchdiffeq; ``grid_constructor``: its grid plus the output times)."""
        perturb = self.opts.get("perturb", False)
        cb_step = self.cb_step
        ys = [y0]
        y = y0
        t = times[0]
        for i, seg in enumerate(self._grid(y0, times), start=1):
            for tn in seg:
                h = tn - t
                if cb_step is not None:
                    self._callback(cb_step, t, y, h)
                if perturb:
                    k0 = self.f(t, y, self._nudged(t, tn))
                    y_new, ks = self.step(t, y, h, k0, self._nudged(tn, t))
                else:
                    k0 = self.f(t, y)
                    y_new, ks = self.step(t, y, h, k0)
                self.stats.n_accepted += 1
                if self.on_step is not None:  # the checkpointed adjoint records the step (output i at its end)
                    self.on_step(t, h, y, [(i, None)] if tn == seg[-1] else [])
                if event is not None:
                    hit = event(t, y, tn, y_new, self._stepper(t, y, h, ks, y_new, lambda: self.f(tn, y_new)))
                    if hit is not None:
                        return hit
                t, y = tn, y_new
            if not bool(torch.isfinite(y).all()):  # a non-finite y0 stays non-finite: it is caught here too
                self.check_y0(y0)
                self._fail("non-finite state (nan or inf)", t, h)
            if on_output is not None:
                jumped = on_output(i, y)
                y = y if jumped is None else jumped
            ys.append(y)
        return ys

    # ---- adaptive
    def initial_step(self, t0, y0, f0, direction, span):
        """Hairer, Nørsett & Wanner I, §II.4 (automatic step size selection) with one read from the device.

        The trial step h0 stays on the device (``f`` is evaluated at ``t0 + h0``
        without reading it); ``d0``, ``d1``, ``d2`` and ``h0`` come back together,
        and the rest is host arithmetic. A non-finite ``d0`` or ``d1`` means a
        non-finite ``y0`` or ``f(t0, y0)``: that read doubles as y0's check.
        """
        y0, f0 = y0.detach(), f0.detach()
        with torch.no_grad():
            scale = self.atol + y0.abs() * self.rtol
            d0 = self.norm(y0 / scale)
            d1 = self.norm(f0 / scale)
            h0 = torch.where(torch.minimum(d0, d1) < 1e-5, 1e-6, 0.01 * d0 / d1).clamp_(max=span)
            dh = h0 if direction > 0 else -h0
            self.stats.nfe += 1
            f1 = self.func(dh + t0, torch.addcmul(y0, f0, dh))
            if self._cast:
                f1 = f1.to(self.dtype)
            d2 = self.norm((f1 - f0) / scale)
            d0, d1, d2, h0 = torch.stack([d0, d1, d2, h0]).tolist()
        if not (math.isfinite(d0) and math.isfinite(d1)):
            self.check_y0(y0)
            self._fail("func returned non-finite values (nan or inf) at the initial state", t0, 0.0)
        d2 = d2 / h0 if math.isfinite(d2) else math.inf
        if d1 <= 1e-15 and d2 <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (self.tab.error_order + 1))
        return min(100 * h0, h1, span)

    def solve_adaptive(self, y0, times, on_output=None, event=None):
        """Integrate through ``times``; returns the states at ``times``.

        With ``on_output`` (the adjoint's jumps), every output time is hit
        exactly (as by a tableau without a dense output) and ``on_output(i, y)`` may replace the state there; the step
        size proposal survives the clipping, so output times cost no
        restarts. Steps also end exactly on ``step_t`` and ``jump_t``; after a
        jump time ``f`` is evaluated afresh one ulp past it, and a step ending
        on it evaluates its last stage one ulp before (torchdiffeq's meaning).
        ``event(t, y, t_next, y_new, interp)`` is asked after each accepted
        step; a result other than ``None`` ends the solve and is returned.
        """
        tab = self.tab
        t0, t_end = times[0], times[-1]
        direction = 1.0 if t_end > t0 else -1.0
        span = abs(t_end - t0)
        # forced stops strictly inside the span (step_t, jump_t), in the direction of integration
        jumps = self.opts.get("jump_t", ())
        stops = sorted({x for x in (*self.opts.get("step_t", ()), *jumps) if direction * (x - t0) > 0
                        and direction * (t_end - x) > 0}, key=lambda x: direction * x)
        jumps = set(jumps)
        n_stop, js = len(stops), 0
        # a tableau without a dense output steps onto every output time (its accuracy, not an interpolant's)
        stop_at_outputs = on_output is not None or tab.dense is None
        cb_step, cb_accept, cb_reject = self.cb_step, self.cb_accept, self.cb_reject
        min_step, max_step = self.min_step, self.max_step
        control = self.controller.begin(tab.error_order)
        y = y0
        k = self.f(t0, y0)
        if "first_step" in self.opts:
            dt = self.opts["first_step"]
            y0_checked = False  # the first error-norm read checks y0
        else:
            dt = self.initial_step(t0, y0, k, direction, min(span, max_step))  # its read checks y0
            y0_checked = True
        if min_step > 0.0 or max_step < math.inf:
            dt = min(max(dt, min_step), max_step)
        ys = [y0]
        i = 1
        n_out = len(times)
        t = t0
        nonfinite = False
        stats = self.stats
        while i < n_out:
            if stats.n_accepted + stats.n_rejected >= self.max_num_steps:
                self._fail(f"max_num_steps={self.max_num_steps} reached before t={times[-1]!r}", t, direction * dt)
            target = times[i] if stop_at_outputs else t_end
            while js < n_stop and direction * (stops[js] - t) <= 0:
                js += 1
            on_stop = js < n_stop and direction * (stops[js] - target) <= 0
            if on_stop:
                target = stops[js]
            t_next = t + direction * dt
            # a step ending a few ulps short of the target would leave a sliver that no step can take
            # (an underflow): such a step goes to the target itself, as diffrax's clipping does
            clipped = direction * (target - t_next) <= SNAP_ULPS * max(math.ulp(target), math.ulp(t_next))
            if clipped and span != math.inf:
                t_next = target
            else:
                clipped = on_stop = False
            h = t_next - t
            if abs(h) <= 10 * abs(math.nextafter(t, direction * math.inf) - t):
                what = "step size underflow"
                if nonfinite:
                    what += " after non-finite values (nan or inf) in the state or its derivative"
                self._fail(what, t, h)
            if cb_step is not None:
                self._callback(cb_step, t, y, h)
            on_jump = on_stop and t_next in jumps
            if on_jump:
                y_new, ks = self.step(t, y, h, k, self._nudged(t_next, t))
            else:
                y_new, ks = self.step(t, y, h, k)
            with torch.no_grad():
                err = _lincomb(h, tab.b_err, ks)
                scale = torch.maximum(y.abs(), y_new.abs()).mul_(self.rtol).add_(self.atol)
                err_norm = self.norm(err.div_(scale))
                if not y0_checked:  # y0's finiteness rides on this read (err / inf can be 0: not enough)
                    err_norm = torch.where(torch.isfinite(y0).all(), err_norm, math.nan)
                err_norm = float(err_norm)
            if not (y0_checked or math.isfinite(err_norm)):
                self.check_y0(y0)
            y0_checked = True
            if err_norm <= 1.0 or (min_step > 0.0 and abs(h) <= min_step and math.isfinite(err_norm)):
                stats.n_accepted += 1
                if cb_accept is not None:
                    self._callback(cb_accept, t, y, h)
                factor = control.accept(err_norm)
                k = ks[-1] if tab.fsal else None
                f1 = None
                if tab.dense is None:  # the interpolant needs f at the step's end; the next step reuses it

                    def f1():
                        nonlocal k
                        if k is None:
                            k = self.f(t_next, y_new, self._nudged(t_next, t) if on_jump else None)
                        return k
                # outputs inside (t, t_next]
                interp = None
                outs = []
                while i < n_out and direction * (times[i] - t_next) <= 0:
                    outs.append((i, None if times[i] == t_next else (times[i] - t) / h))
                    i += 1
                if len(outs) > 2 and tab.dense is not None:  # many outputs in one step: one contraction
                    many = self.interpolate_many(y, h, ks, [th if th is not None else 1.0 for _, th in outs])
                    ys.extend(many.unbind(0))
                    if outs[-1][1] is None:
                        ys[-1] = y_new
                else:
                    for j, th in outs:
                        if th is None:
                            ys.append(y_new)
                        else:
                            if interp is None:
                                interp = self._stepper(t, y, h, ks, y_new, f1)
                            ys.append(interp(times[j]))
                if self.on_step is not None:  # the checkpointed adjoint records the step and its outputs
                    self.on_step(t, h, y, outs)
                if event is not None:
                    hit = event(t, y, t_next, y_new, interp or self._stepper(t, y, h, ks, y_new, f1))
                    if hit is not None:
                        return hit
                if on_jump:
                    k = None  # f is evaluated afresh on the far side of the discontinuity
                if on_stop:
                    js += 1
                if on_output is not None and clipped and t_next == times[i - 1]:
                    jumped = on_output(i - 1, y_new)
                    if jumped is not None:
                        y_new = jumped
                        ys[-1] = y_new
                        k = None
                new_dt = abs(h) * factor
                # a clipped step was shortened by an output time, not by the controller: keep the longer proposal
                # from before the clip when the controller would grow the step, but follow its advice to shrink
                dt = max(new_dt, dt) if clipped and factor > 1.0 else new_dt
                if min_step > 0.0 or max_step < math.inf:
                    dt = min(max(dt, min_step), max_step)
                t, y = t_next, y_new
                if k is None and i < n_out:
                    k = self.f(t, y, self._nudged(t, t + direction) if on_jump else None)
            else:
                stats.n_rejected += 1
                if cb_reject is not None:
                    self._callback(cb_reject, t, y, h)
                nonfinite = nonfinite or not math.isfinite(err_norm)
                dt = abs(h) * control.reject(err_norm)
                if min_step > 0.0 or max_step < math.inf:
                    dt = min(max(dt, min_step), max_step)
        return ys


# --------------------------------------------------------------------------- plan


@dataclass
class _Plan:
    func: Callable
    tab: ButcherTableau
    times: list
    rtol: float
    atol: float
    options: dict
    packing: _Packing
    stats: SolverStats

    ts: torch.Tensor | None  # None when t came as Python floats (see ``t_tensor``)
    # combines the error norms over data-parallel processes (solve's ``norm_reduce``); the adjoint's backward
    # solve uses it too
    norm_reduce: Callable | None = None

    def integrator(self):
        p = self.packing
        if self.tab is SCIPY_METHOD:
            if _callbacks(self.func, {}) is not None:
                warnings.warn("method 'scipy_solver' calls no step callbacks (SciPy takes the steps)", stacklevel=4)
            return ScipyIntegrator(p.wrap(self.func), self.rtol, self.atol, self.options, self.stats, p.dtype,
                                   p.device)
        norm = self.options.get("norm")
        reduce = self.norm_reduce
        norm = p.rms_norm(reduce) if norm is None else _user_norm(norm, p.unpack, p.dtype, p.device, reduce)
        return _Integrator(p.wrap(self.func), self.tab, self.rtol, self.atol, self.options, self.stats,
                           norm, p.dtype, p.device, callbacks=_callbacks(self.func, self.options),
                           unpack=p.unpack)

    def run(self, y0_packed, on_step=None):
        """The forward solve: the packed state at every output time (``on_step``: see ``_Integrator``)."""
        integ = self.integrator()
        integ.on_step = on_step
        if len(self.times) == 1:
            integ.check_y0(y0_packed)
            return [y0_packed]
        if "step_size" not in self.options:
            if self.tab is SCIPY_METHOD:
                with torch.no_grad():
                    return integ.solve_adaptive(y0_packed, self.times)
            return integ.solve_adaptive(y0_packed, self.times)
        return integ.solve_fixed(y0_packed, self.times)

    def t_tensor(self) -> torch.Tensor:
        """``t`` as given, or the Python-float times as a tensor on the state's device (a copy to it, no sync)."""
        if self.ts is None:
            self.ts = torch.tensor(self.times, dtype=self.packing.dtype, device=self.packing.device)
        return self.ts

    def solution(self, ys_packed) -> Solution:
        return Solution(self.packing.unpack_stack(ys_packed), self.t_tensor(), self.stats)


def _user_norm(norm, unpack, dtype, device, reduce=None):
    """A norm given in options, called as torchdiffeq does: on the scaled error shaped like y0 (a tuple for a
    tuple state); its result as a 0-dim tensor of the state's dtype (combined over processes by ``reduce``)."""
    if reduce is None:
        return lambda r: torch.as_tensor(norm(unpack(r)), dtype=dtype, device=device)
    return lambda r: reduce(torch.as_tensor(norm(unpack(r)), dtype=dtype, device=device))


CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")


def _callbacks(func, options, suffix=""):
    """torchdiffeq's step callbacks, looked up on ``func`` (``suffix="_adjoint"``: the backward pass's twins);
    ``None`` when ``func`` defines none. A fixed grid has no accepted or rejected steps: setting those warns."""
    cbs = tuple(getattr(func, name + suffix, None) for name in CALLBACKS)
    if not any(c is not None for c in cbs):
        return None
    if "step_size" in options and (cbs[1] is not None or cbs[2] is not None):
        warnings.warn(f"func defines callback_accept_step{suffix}/callback_reject_step{suffix}, but a fixed-grid "
                      f"solve accepts every step and rejects none; only callback_step{suffix} is called", stacklevel=4)
        cbs = (cbs[0], None, None)
    return cbs


def _plan(func, y0, t, rtol, atol, method, options, norm_reduce=None, controller=None) -> _Plan:
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
    tab = _check_method(method)
    if controller is not None:
        if tab is SCIPY_METHOD or not tab.adaptive:
            raise ValueError(f"controller applies to an adaptive method; method {tab.name!r} "
                             f"{'lets SciPy choose the steps' if tab is SCIPY_METHOD else 'takes fixed steps'}")
        if isinstance(options, dict) and options.get("controller") is not None:
            raise ValueError("controller given both as solve(..., controller=) and in options['controller']; "
                             "pass it once")
        options = dict(options or {}, controller=controller) if isinstance(options, dict) or options is None \
            else options
    if norm_reduce is not None:
        if not callable(norm_reduce):
            raise TypeError(f"norm_reduce must be None or callable (this process's error norms -> the norms over "
                            f"all processes' data), got {type(norm_reduce).__name__}")
        if tab is SCIPY_METHOD:
            raise ValueError("norm_reduce applies to ndode's Runge-Kutta methods; method='scipy_solver' lets SciPy "
                             "choose the steps, so data-parallel processes cannot share its error norm")
    rtol = _check_tol("rtol", rtol)
    atol = _check_tol("atol", atol)
    if tab.adaptive and rtol == 0 and atol == 0:
        raise ValueError(f"rtol and atol are both 0; adaptive method {method!r} needs at least one positive tolerance")
    opts = _check_options(options, tab)
    packing = _Packing(y0)
    times = _check_t(t)
    return _Plan(func, tab, times, rtol, atol, opts, packing, SolverStats(), t if isinstance(t, torch.Tensor) else None,
                 norm_reduce)


class Adjoint:
    """How :func:`ndode.solve` differentiates a solve when passed as ``adjoint=``; see ``ndode.BacksolveAdjoint``.

    The core calls ``run(plan, y0)`` and knows nothing else about it, so an
    adjoint depends on the core and never the reverse.
    """

    def run(self, plan: _Plan, y0) -> Solution:
        raise NotImplementedError



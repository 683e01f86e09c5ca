"""The Runge–Kutta loop: one stepping routine for every tableau, fixed grids and adaptive steps.

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
* The error is the RMS norm of the embedded estimate scaled by
  ``atol + rtol·max(|y|,|y_new|)``; the step-size controller is an object
  (``ndode.ode.controller``); the default one follows Hairer, Nørsett & Wanner
  (I, §II.4) as SciPy's ``RK45`` does (safety 0.9, growth ≤ 10, shrink ≥ 0.2,
  no growth right after a rejection), with the automatic initial step, so
  evaluation counts are comparable with SciPy's.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import torch

from ..tableau import ButcherTableau
from .checks import DEFAULT_CONTROLLER, DEFAULT_MAX_NUM_STEPS, _check_t
from .packing import _check_func_output
from .types import SolverError, SolverStats

# A step that would end this many ulps (or fewer) short of an output time ends on it. More than the
# underflow threshold (10 ulps of t), so no sliver below it can remain.
SNAP_ULPS = 16


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

    An adaptive solve's steps end exactly on ``step_t`` and ``jump_t``; after a
    jump time ``f`` is evaluated afresh one ulp past it, and a step ending on it
    evaluates its last stage one ulp before (torchdiffeq's meaning). The hooks
    are arguments of the solve: with ``on_output`` (the adjoint's jumps) every
    output time is hit exactly and ``on_output(i, y)`` may replace the state
    there; the step-size proposal survives the clipping, so output times cost
    no restarts. ``event(t, y, t_next, y_new, interp)`` is asked after each
    accepted step; a result other than ``None`` ends the solve and is returned.
    ``on_step(t, h, y, outs)`` sees every accepted step (``outs``: see
    ``_outputs``; the checkpointed adjoint records the steps with it).
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
        self.error_order = tab.error_order or 0  # the embedded estimate's (every adaptive tableau has one)
        self.max_num_steps = options.get("max_num_steps", DEFAULT_MAX_NUM_STEPS)
        self.min_step = options.get("min_step", 0.0)
        self.max_step = options.get("max_step", math.inf)
        cb = callbacks if callbacks is not None and any(c is not None for c in callbacks) else None
        self.cb_step: Callable | None
        self.cb_accept: Callable | None
        self.cb_reject: Callable | None
        self.cb_step, self.cb_accept, self.cb_reject = cb if cb is not None else (None, None, None)
        self.unpack = unpack if unpack is not None else (lambda y: y)
        self._checked = False
        self._cast = False
        self._last_t: float | None = None
        self._last_tt: torch.Tensor | None = None

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

    def solve_fixed(self, y0, times, on_output=None, event=None, on_step=None):
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
                if on_step is not None:  # the checkpointed adjoint records the step (output i at its end)
                    on_step(t, h, y, [(i, None)] if tn == seg[-1] else [])
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
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (self.error_order + 1))
        return min(100 * h0, h1, span)

    def solve_adaptive(self, y0, times, on_output=None, event=None, on_step=None):
        """Integrate through ``times``; returns the states at ``times`` (or what ``event`` returned). The hooks
        ``on_output``, ``event``, ``on_step`` and the options ``step_t``/``jump_t``: see the class docstring."""
        tab, stats, n_out = self.tab, self.stats, len(times)
        t0, t_end = times[0], times[-1]
        direction = 1.0 if t_end > t0 else -1.0
        stops, jumps = self._stops(t0, t_end, direction)
        # a tableau without a dense output steps onto every output time (its accuracy, not an interpolant's)
        stop_at_outputs = on_output is not None or tab.dense is None
        control = self.controller.begin(self.error_order)
        k = self.f(t0, y0)
        unchecked = y0 if "first_step" in self.opts else None  # the first error-norm read checks y0 ...
        dt = self.opts["first_step"] if unchecked is not None else \
            self.initial_step(t0, y0, k, direction, min(abs(t_end - t0), self.max_step))  # ... or this one's
        t, y, ys, i, js, nonfinite = t0, y0, [y0], 1, 0, False
        while i < n_out:
            dt = min(max(dt, self.min_step), self.max_step)  # the one clamp: every proposal passes here
            if stats.n_accepted + stats.n_rejected >= self.max_num_steps:
                self._fail(f"max_num_steps={self.max_num_steps} reached before t={t_end!r}", t, direction * dt)
            while js < len(stops) and direction * (stops[js] - t) <= 0:
                js += 1
            target = times[i] if stop_at_outputs else t_end
            on_stop = js < len(stops) and direction * (stops[js] - target) <= 0
            t_next, clipped = self._clip(t, dt, stops[js] if on_stop else target, direction, t_end - t0)
            h = t_next - t
            self._check_underflow(t, h, direction, nonfinite)
            if self.cb_step is not None:
                self._callback(self.cb_step, t, y, h)
            on_jump = on_stop and clipped and t_next in jumps
            y_new, ks = self.step(t, y, h, k, self._nudged(t_next, t) if on_jump else None)
            err, unchecked = self._error_norm(h, ks, y, y_new, unchecked), None
            if not (err <= 1.0 or (self.min_step > 0.0 and abs(h) <= self.min_step and math.isfinite(err))):
                stats.n_rejected += 1
                if self.cb_reject is not None:
                    self._callback(self.cb_reject, t, y, h)
                nonfinite = nonfinite or not math.isfinite(err)
                dt = abs(h) * control.reject(err)
                continue
            stats.n_accepted += 1
            if self.cb_accept is not None:
                self._callback(self.cb_accept, t, y, h)
            factor = control.accept(err)
            k = ks[-1] if tab.fsal else None
            # the Hermite interpolant of a tableau without a dense output needs f at the step's end; so does the next step
            f1 = None if tab.dense is not None else _Lazy(
                lambda: self.f(t_next, y_new, self._nudged(t_next, t) if on_jump else None), k)
            i, outs, interp = self._outputs(t, y, h, ks, y_new, f1, times, i, t_next, direction, ys)
            if on_step is not None:  # the checkpointed adjoint records the step and its outputs
                on_step(t, h, y, outs)
            if event is not None:
                hit = event(t, y, t_next, y_new, interp or self._stepper(t, y, h, ks, y_new, f1))
                if hit is not None:
                    return hit
            k = None if on_jump else (f1.value if f1 is not None else k)  # after a jump: f afresh beyond it
            if on_output is not None and clipped and t_next == times[i - 1]:
                jumped = on_output(i - 1, y_new)
                if jumped is not None:
                    y_new = ys[-1] = jumped
                    k = None
            # a clipped step was shortened by an output time, not by the controller: keep the longer proposal
            # from before the clip when the controller would grow the step, but follow its advice to shrink
            dt = max(abs(h) * factor, dt) if clipped and factor > 1.0 else abs(h) * factor
            t, y = t_next, y_new
            if k is None and i < n_out:
                k = self.f(t, y, self._nudged(t, t + direction) if on_jump else None)
        return ys

    def _stops(self, t0, t_end, direction):
        """The forced stops strictly inside the span (``step_t``, ``jump_t``) in the direction of integration, and
        the jump times."""
        jumps = self.opts.get("jump_t", ())
        stops = sorted({x for x in (*self.opts.get("step_t", ()), *jumps)
                        if direction * (x - t0) > 0 and direction * (t_end - x) > 0}, key=lambda x: direction * x)
        return stops, set(jumps)

    @staticmethod
    def _clip(t, dt, target, direction, span):
        """The step's end and whether it was clipped onto ``target``: a step ending a few ulps short of the target
        would leave a sliver that no step can take (an underflow), so it goes to the target itself, as diffrax's
        clipping does. An event solve (infinite span) has no target."""
        t_next = t + direction * dt
        clipped = (math.isfinite(span)
                   and direction * (target - t_next) <= SNAP_ULPS * max(math.ulp(target), math.ulp(t_next)))
        return (target, True) if clipped else (t_next, False)

    def _check_underflow(self, t, h, direction, nonfinite):
        if abs(h) <= 10 * abs(math.nextafter(t, direction * math.inf) - t):
            what = "step size underflow"
            if nonfinite:
                what += " after non-finite values (nan or inf) in the state or its derivative"
            self._fail(what, t, h)

    def _error_norm(self, h, ks, y, y_new, unchecked):
        """The scaled RMS norm of the step's error estimate, read to the host (the step's one sync). ``unchecked``:
        a y0 not yet checked for finiteness, whose check rides on this read (err / inf can be 0: not enough)."""
        with torch.no_grad():
            err = _lincomb(h, self.tab.b_err, ks)
            scale = torch.maximum(y.abs(), y_new.abs()).mul_(self.rtol).add_(self.atol)
            err_norm = self.norm(err.div_(scale))
            if unchecked is not None:
                err_norm = torch.where(torch.isfinite(unchecked).all(), err_norm, math.nan)
            err_norm = float(err_norm)
        if unchecked is not None and not math.isfinite(err_norm):
            self.check_y0(unchecked)
        return err_norm

    def _outputs(self, t, y, h, ks, y_new, f1, times, i, t_next, direction, ys):
        """Append the states at the output times in ``(t, t_next]`` to ``ys``; returns the next output's index, the
        outputs as ``(index, theta)`` pairs (``theta=None`` for the step's end state, else the dense output at
        ``t + theta*h``) and the step's interpolant if one was built."""
        outs = []
        while i < len(times) and direction * (times[i] - t_next) <= 0:
            outs.append((i, None if times[i] == t_next else (times[i] - t) / h))
            i += 1
        interp = None
        if len(outs) > 2 and self.tab.dense is not None:  # many outputs in one step: one contraction
            ys.extend(self.interpolate_many(y, h, ks, [th if th is not None else 1.0 for _, th in outs]).unbind(0))
            if outs[-1][1] is None:
                ys[-1] = y_new
            return i, outs, interp
        for j, th in outs:
            if th is None:
                ys.append(y_new)
            else:
                if interp is None:
                    interp = self._stepper(t, y, h, ks, y_new, f1)
                ys.append(interp(times[j]))
        return i, outs, interp


class _Lazy:
    """A value computed on first use and kept (f at a step's end: wanted by a Hermite interpolant, maybe, and by
    the next step)."""

    __slots__ = ("fn", "value")

    def __init__(self, fn, value=None):
        self.fn, self.value = fn, value

    def __call__(self):
        if self.value is None:
            self.value = self.fn()
        return self.value

"""Step-size controllers: how an adaptive solve sizes its next step from the error of the last one.

A controller is a small immutable object handed to a solve
(``ndode.solve(..., controller=ndode.PIController())``, or
``options={"controller": ...}`` in ``ndode.odeint``, torchdiffeq's way of passing
solver settings). Each solve calls ``controller.begin(error_order)`` for a fresh
:class:`ControllerState`, which holds what the controller remembers between steps
(the last error, whether the last attempt was rejected); the controller itself
holds nothing, so one object serves any number of solves, forward and backward.

The state maps the RMS error norm ``err`` of the step just attempted (``<= 1``:
accepted; maybe ``inf``/``nan``) to the factor by which the step size changes.
Clamping the resulting step to ``min_step``/``max_step`` is the integrator's job.

This module imports nothing from ndode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["StepController", "ControllerState", "IController", "PIController", "CONTROLLERS", "check_controller"]


class ControllerState:
    """One solve's controller: ``accept(err)`` / ``reject(err)`` return the factor for the next step size."""

    def accept(self, err: float) -> float:
        raise NotImplementedError

    def reject(self, err: float) -> float:
        raise NotImplementedError


class StepController:
    """Base of the step-size controllers: ``begin(error_order)`` starts one solve's :class:`ControllerState`.

    ``error_order`` is the order of the embedded error estimate (4 for dopri5),
    so the local error scales as ``h ** (error_order + 1)``.
    """

    safety: float
    min_factor: float
    max_factor: float

    def begin(self, error_order: int) -> ControllerState:
        raise NotImplementedError

    def _check(self) -> None:
        _in_range(self, "safety", 0.0, 1.0, closed_hi=True)
        _in_range(self, "min_factor", 0.0, 1.0)
        _in_range(self, "max_factor", 1.0, math.inf)


def _in_range(obj, name, lo, hi, closed_hi=False):
    v = getattr(obj, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and lo < v and (v <= hi if closed_hi else v < hi)
    if not ok:
        raise ValueError(f"{type(obj).__name__}: {name} must be a finite number in ({lo}, {hi}{']' if closed_hi else ')'}, "
                         f"got {v!r}")


@dataclass(frozen=True)
class IController(StepController):
    """The integral ("standard") controller of Hairer, Nørsett & Wanner (I, §II.4), as SciPy's ``RK45`` has it.

    ``h_new = h · clip(safety · err^(-1/(q+1)), min_factor, max_factor)`` with
    ``q`` the error estimate's order; no growth on the step right after a
    rejection. With the defaults a ``dopri5`` solve makes exactly as many
    evaluations as SciPy's ``RK45`` (``tests/test_solver.py`` checks it).
    """

    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0

    def __post_init__(self):
        self._check()

    def begin(self, error_order: int) -> ControllerState:
        return _IState(self, -1.0 / (error_order + 1))


class _State(ControllerState):
    """What both controllers do on a rejected step: shrink by ``safety · err^alpha`` (at least ``min_factor``; by
    ``min_factor`` for a non-finite error) and remember it, so the next accepted step may not grow."""

    __slots__ = ()
    c: StepController
    alpha: float
    rejected: bool

    def reject(self, err):
        self.rejected = True
        if not math.isfinite(err):
            return self.c.min_factor
        return max(self.c.min_factor, self.c.safety * err**self.alpha)


class _IState(_State):
    __slots__ = ("c", "alpha", "rejected")

    def __init__(self, c: IController, alpha: float):
        self.c, self.alpha, self.rejected = c, alpha, False

    def accept(self, err):
        c = self.c
        factor = c.max_factor if err == 0.0 else min(c.max_factor, c.safety * err**self.alpha)
        if self.rejected:
            factor = min(1.0, factor)
        self.rejected = False
        return factor


@dataclass(frozen=True)
class PIController(StepController):
    """A proportional–integral controller (Gustafsson 1991; Hairer & Wanner II, §IV.2, eq. (2.43c)).

    After an accepted step,
    ``h_new = h · clip(safety · err_n^(-(icoeff + pcoeff)/k) · err_{n-1}^(pcoeff/k), min_factor, max_factor)``
    with ``k = q + 1`` and ``err_{n-1}`` the previous accepted step's error
    (1 before the first; floored at 1e-4, as in Hairer's DOPRI5, so a step of
    near-zero error does not stall the next one): the step follows the error's trend as well as its level,
    which damps the oscillating step sequences (accept, reject, accept, ...) of
    the I-controller. A rejected step shrinks by the integral term alone
    (``safety · err^(-(icoeff + pcoeff)/k)``, at least ``min_factor``) and the
    next step may not grow, as in DOPRI5. ``pcoeff=0, icoeff=1`` is the
    :class:`IController` (``tests/test_solver.py`` checks they take the same steps).

    The coefficients are diffrax's ``PIDController`` ``pcoeff``/``icoeff``; the
    defaults are Hairer's DOPRI5 (β = 0.04, exponent 0.2 − 0.75β for ``k = 5``:
    ``pcoeff = 5β = 0.2``, ``icoeff = 5(0.2 − 0.75β) − 0.2 = 0.65``); Gustafsson's
    (0.4, 0.3) is the other common choice (``benchmarks/detest.py`` measures both).
    """

    pcoeff: float = 0.2
    icoeff: float = 0.65
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0

    def __post_init__(self):
        self._check()
        _in_range(self, "icoeff", 0.0, math.inf)
        if not (isinstance(self.pcoeff, (int, float)) and 0.0 <= self.pcoeff < math.inf):
            raise ValueError(f"PIController: pcoeff must be a finite number >= 0, got {self.pcoeff!r}")

    def begin(self, error_order: int) -> ControllerState:
        k = error_order + 1
        return _PIState(self, -(self.icoeff + self.pcoeff) / k, self.pcoeff / k)


ERR_FLOOR = 1e-4  # Hairer's DOPRI5: facold = max(err, 1e-4)


class _PIState(_State):
    __slots__ = ("c", "alpha", "beta", "prev", "rejected")

    def __init__(self, c: PIController, alpha: float, beta: float):
        self.c, self.alpha, self.beta = c, alpha, beta
        self.prev, self.rejected = 1.0, False

    def accept(self, err):
        c = self.c
        if err == 0.0:
            factor = c.max_factor
        else:
            factor = min(c.max_factor, max(c.min_factor, c.safety * err**self.alpha * self.prev**self.beta))
        if self.rejected:
            factor = min(1.0, factor)
        self.prev, self.rejected = max(err, ERR_FLOOR), False
        return factor


# the controllers by name: ``controller="pi"``, ``options={"controller": "pi"}`` (a config can name one)
CONTROLLERS = {"integral": IController, "pi": PIController}


def check_controller(value, arg="controller") -> StepController:
    """A controller object, or one built from its name in :data:`CONTROLLERS`; a clear error otherwise."""
    if isinstance(value, StepController):
        return value
    if isinstance(value, str) and value in CONTROLLERS:
        return CONTROLLERS[value]()
    raise ValueError(f"{arg} must be a step-size controller (ndode.IController(), ndode.PIController()) or one "
                     f"of the names {', '.join(map(repr, CONTROLLERS))}, got {value!r}")

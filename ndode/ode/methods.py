"""The method registry: every ``method=`` name maps to one method object.

A method object tells a solve what it needs and nothing more: ``name``,
``adaptive``, ``check_options(options, arg, also)`` (the validated options) and
``integrator(...)`` (an object with ``solve_adaptive``/``solve_fixed``), plus
two capabilities the rest of the engine asks about instead of asking which
method it is: ``own_steps`` (ndode's loop takes the steps, so a step-size
controller, a data-parallel ``norm_reduce`` and a recorded step sequence apply)
and ``differentiable`` (autograd can see through the solve). Each Runge–Kutta
tableau is one entry (:class:`RungeKuttaMethod`); SciPy's ``solve_ivp``
(``ndode.scipy_solver``) is another.
"""

from __future__ import annotations

from typing import Protocol

from ..scipy_solver import SCIPY_METHOD
from ..tableau import TABLEAUS, ButcherTableau
from .checks import _check_options
from .integrator import _Integrator

__all__ = ["Method", "RungeKuttaMethod", "REGISTRY", "METHODS", "get_method"]


class Method(Protocol):
    """What the engine asks of a method (see the module docstring)."""

    name: str
    adaptive: bool
    own_steps: bool
    differentiable: bool

    def check_options(self, options, arg: str = "options", also=()) -> dict: ...

    def integrator(self, func, rtol, atol, options, stats, dtype, device, *, norm=None, phase="", callbacks=None,
                   unpack=None): ...


class RungeKuttaMethod:
    """A Butcher tableau run by ndode's own loop (``ndode.ode.integrator``)."""

    own_steps = True
    differentiable = True

    def __init__(self, tab: ButcherTableau):
        self.tab, self.name, self.adaptive = tab, tab.name, tab.adaptive

    def __repr__(self):
        return f"RungeKuttaMethod({self.name!r})"

    def check_options(self, options, arg="options", also=()) -> dict:
        return _check_options(options, self.tab, arg, also)

    def integrator(self, func, rtol, atol, options, stats, dtype, device, *, norm=None, phase="", callbacks=None,
                   unpack=None):
        return _Integrator(func, self.tab, rtol, atol, options, stats, norm, dtype, device, phase=phase,
                           callbacks=callbacks, unpack=unpack)


REGISTRY: dict[str, Method] = {name: RungeKuttaMethod(tab) for name, tab in TABLEAUS.items()}
REGISTRY[SCIPY_METHOD.name] = SCIPY_METHOD
# ndode's own Runge–Kutta methods by name (``ndode.METHODS``; the registry adds ``scipy_solver``)
METHODS = tuple(TABLEAUS)


def get_method(method, arg="method") -> Method:
    """The method object registered under ``method``; a clear error naming the known ones otherwise."""
    if not isinstance(method, str) or method not in REGISTRY:
        raise ValueError(f"unknown {arg} {method!r}; known methods: {', '.join(REGISTRY)}")
    return REGISTRY[method]

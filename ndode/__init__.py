"""ndode: an ODE solver and adjoint core for Neural ODEs, and the paper's experiments built on it."""

from .adjoint import BacksolveAdjoint, odeint_adjoint
from .solver import METHODS, Adjoint, Solution, SolverError, SolverStats, odeint, solve
from .tableau import TABLEAUS, ButcherTableau, TableauError

__all__ = [
    "solve", "odeint", "odeint_adjoint", "BacksolveAdjoint", "Adjoint", "Solution", "SolverStats", "SolverError",
    "METHODS", "TABLEAUS", "ButcherTableau", "TableauError", "load_runs",
]
__version__ = "0.1.0"


def __getattr__(name):  # imported lazily to keep `import ndode` light (load_runs needs pandas)
    if name == "load_runs":  # every run record under a root -> one DataFrame (the input of all tables/figures)
        from .harness.collect import load_runs

        return load_runs
    raise AttributeError(f"module 'ndode' has no attribute {name!r}")

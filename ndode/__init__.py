"""ndode: an ODE solver and adjoint core for Neural ODEs, and the paper's experiments built on it."""

from .solver import METHODS, Solution, SolverError, SolverStats, odeint, solve
from .tableau import TABLEAUS, ButcherTableau, TableauError

__all__ = [
    "solve", "odeint", "odeint_adjoint", "Solution", "SolverStats", "SolverError",
    "METHODS", "TABLEAUS", "ButcherTableau", "TableauError",
]
__version__ = "0.1.0"


def __getattr__(name):  # imported lazily: the adjoint is not needed by every user of the core
    if name == "odeint_adjoint":
        from .adjoint import odeint_adjoint

        return odeint_adjoint
    raise AttributeError(f"module 'ndode' has no attribute {name!r}")

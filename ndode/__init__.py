"""ndode: an ODE solver and adjoint core for Neural ODEs, and the paper's experiments built on it.

The core's top level knows nothing of the experiments: the run harness and its
collector live in ``ndode.harness`` (``ndode.harness.load_runs``).
"""

from .adjoint import BacksolveAdjoint, odeint_adjoint
from .checkpoint_adjoint import CheckpointAdjoint
from .controller import CONTROLLERS, IController, PIController, StepController
from .event import odeint_event
from .solver import METHODS, Adjoint, Solution, SolverError, SolverStats, odeint, solve
from .tableau import TABLEAUS, ButcherTableau, TableauError

# the differentiation methods by name (configs' solver.adjoint, ODEBlock); "none" is direct backpropagation
ADJOINTS = {"backsolve": BacksolveAdjoint, "checkpoint": CheckpointAdjoint}

__all__ = [
    "solve", "odeint", "odeint_adjoint", "odeint_event", "BacksolveAdjoint", "CheckpointAdjoint", "ADJOINTS", "Adjoint",
    "Solution", "SolverStats", "SolverError",
    "StepController", "IController", "PIController", "CONTROLLERS",
    "METHODS", "TABLEAUS", "ButcherTableau", "TableauError",
]
__version__ = "0.1.0"

"""ndode: an ODE solver and adjoint core for Neural ODEs, and the paper's experiments built on it.

The core's top level knows nothing of the experiments: the run harness and its
collector live in ``ndode.harness`` (``ndode.harness.load_runs``).
"""

from .adjoint import BacksolveAdjoint
from .api import odeint, odeint_adjoint, odeint_event
from .checkpoint_adjoint import CheckpointAdjoint
from .ode.controller import CONTROLLERS, IController, PIController, StepController
from .ode.methods import METHODS, REGISTRY
from .ode.plan import Adjoint
from .ode.types import Solution, SolverError, SolverStats
from .solver import solve
from .tableau import TABLEAUS, ButcherTableau, TableauError

# the differentiation methods by name (configs' solver.adjoint, ODEBlock); "none" is direct backpropagation
ADJOINTS = {"backsolve": BacksolveAdjoint, "checkpoint": CheckpointAdjoint}

__all__ = [
    "solve", "odeint", "odeint_adjoint", "odeint_event", "BacksolveAdjoint", "CheckpointAdjoint", "ADJOINTS", "Adjoint",
    "Solution", "SolverStats", "SolverError",
    "StepController", "IController", "PIController", "CONTROLLERS",
    "METHODS", "REGISTRY", "TABLEAUS", "ButcherTableau", "TableauError",
]
__version__ = "0.1.0"

"""``ODEBlock``: a layer whose output is the solution at ``t1`` of ``dh/dt = f(h, t)`` from ``h(t0) = x``.

The paper's replacement for a stack of residual blocks (Section 3). Gradients
come from the adjoint (``adjoint=ndode.BacksolveAdjoint()``, the default: memory
constant in the number of solver steps), from backpropagating through the
solver's operations (``adjoint=None``, the paper's RK-Net), or from the
checkpointed adjoint (``adjoint=ndode.CheckpointAdjoint()``: RK-Net's gradients,
one saved state per step instead of every stage's activations). Each forward keeps the solver's
statistics, so a training loop can log NFE-F and NFE-B per batch without
wrapping ``f``.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

import ndode

__all__ = ["ODEBlock", "ode_blocks", "BACKSOLVE"]

# the default: the paper's ODE-Net. An adjoint holds only its settings, so one object serves every block.
BACKSOLVE = ndode.BacksolveAdjoint()


class ODEBlock(nn.Module):
    """Integrate ``func`` (an ``nn.Module`` called as ``func(t, h)``) over ``[t0, t1]``.

    ``rtol``/``atol`` are the training tolerances; ``eval_rtol``/``eval_atol``
    (default: the same) apply in ``eval()`` mode, so the test-time tolerance can
    be changed on a trained model (the paper's Figure 3a) with ``set_tolerance``.
    ``options`` go to the solver (``{"step_size": h}`` for fixed-step methods; without it one step per block),
    ``adjoint`` is an ``ndode.Adjoint`` object, used as it is (its own options set
    its backward solve, e.g. ``ndode.BacksolveAdjoint(options={"norm": "full"})``),
    or None for direct backpropagation; experiments build it from the config in
    one place (``ndode.harness.solver_kwargs``).
    ``norm_reduce`` goes to every solve (``ndode.solve``'s, for data-parallel
    training): the harness sets it for the span of each training step
    (``ndode.harness.ddp.synced_error_norms``) and clears it after, so
    evaluation and probes on one rank never wait on the others.
    """

    def __init__(
        self,
        func: nn.Module,
        *,
        t0: float = 0.0,
        t1: float = 1.0,
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        options: dict | None = None,
        adjoint: ndode.Adjoint | None = BACKSOLVE,
        eval_rtol: float | None = None,
        eval_atol: float | None = None,
        norm_reduce=None,
    ):
        super().__init__()
        if not isinstance(func, nn.Module):
            raise TypeError(f"ODEBlock needs func to be an nn.Module (its parameters are trained), got {type(func).__name__}")
        if method not in ndode.METHODS:
            raise ValueError(f"method={method!r} is not a known solver; choose one of {', '.join(ndode.METHODS)}")
        if adjoint is not None and not isinstance(adjoint, ndode.Adjoint):
            raise TypeError(f"adjoint={adjoint!r}: pass an adjoint method, e.g. ndode.BacksolveAdjoint() or "
                            f"ndode.CheckpointAdjoint(), or None for direct backpropagation")
        self.func = func
        self.method = method
        self.options = dict(options) if options else None
        self.adjoint = adjoint
        self.rtol, self.atol = float(rtol), float(atol)
        self.eval_rtol = None if eval_rtol is None else float(eval_rtol)
        self.eval_atol = None if eval_atol is None else float(eval_atol)
        # Python floats, not a device buffer: the solver takes them as they are, so a forward on a GPU never
        # reads the times back from the device
        self.t0, self.t1 = float(t0), float(t1)
        self.last_stats: ndode.SolverStats | None = None
        self.norm_reduce = norm_reduce

    def set_tolerance(self, rtol: float, atol: float | None = None, *, eval_only: bool = False) -> None:
        """Set ``rtol`` and ``atol`` (default: ``rtol``); with ``eval_only`` only for ``eval()`` mode."""
        atol = rtol if atol is None else atol
        if eval_only:
            self.eval_rtol, self.eval_atol = float(rtol), float(atol)
        else:
            self.rtol, self.atol = float(rtol), float(atol)

    def tolerance(self) -> tuple[float, float]:
        """The ``(rtol, atol)`` the next forward will use (depends on train/eval mode)."""
        if self.training:
            return self.rtol, self.atol
        return (self.rtol if self.eval_rtol is None else self.eval_rtol,
                self.atol if self.eval_atol is None else self.eval_atol)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rtol, atol = self.tolerance()
        sol = ndode.solve(self.func, x, [self.t0, self.t1], rtol=rtol, atol=atol, method=self.method,
                          options=self.options, adjoint=self.adjoint, norm_reduce=self.norm_reduce)
        self.last_stats = sol.stats
        return sol.ys[-1]

    @property
    def nfe_forward(self) -> int | None:
        """Function evaluations of the last forward solve (None before the first)."""
        return None if self.last_stats is None else self.last_stats.nfe

    @property
    def nfe_backward(self) -> int | None:
        """Function evaluations of the adjoint solve of the last forward's backward pass.

        None until ``backward()`` has run, and always None without the adjoint
        (backpropagating through the solver makes one vector-Jacobian product
        per forward evaluation instead of solving anything).
        """
        return None if self.last_stats is None else self.last_stats.nfe_backward

    def extra_repr(self) -> str:
        t0, t1 = self.t0, self.t1
        opts = f", options={self.options}" if self.options else ""
        adjoint = None if self.adjoint is None else type(self.adjoint).__name__
        return f"t=[{t0:g}, {t1:g}], method={self.method}, rtol={self.rtol:g}, atol={self.atol:g}{opts}, adjoint={adjoint}"


def ode_blocks(model: nn.Module) -> Iterator[ODEBlock]:
    """Every ``ODEBlock`` inside ``model`` (for logging NFE or changing tolerances)."""
    return (m for m in model.modules() if isinstance(m, ODEBlock))

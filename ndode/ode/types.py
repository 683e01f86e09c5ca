"""What a solve returns and raises: :class:`Solution`, :class:`SolverStats`, :class:`SolverError`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Solution", "SolverStats", "SolverError"]


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

"""Vector fields the adjoint tests share (float64)."""

from __future__ import annotations

import torch

D = torch.float64


class MLPField(torch.nn.Module):
    """f(t, y) = W2 tanh(W1 [y, t] + b1): non-autonomous, so time enters every stage."""

    def __init__(self, dim=2, hidden=8, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(hidden, dim + 1, generator=g, dtype=D) / 2)
        self.b1 = torch.nn.Parameter(torch.randn(hidden, generator=g, dtype=D) / 2)
        self.w2 = torch.nn.Parameter(torch.randn(dim, hidden, generator=g, dtype=D) / 2)

    def forward(self, t, y):
        ty = torch.cat([y, t.expand(*y.shape[:-1], 1)], dim=-1)
        return torch.tanh(ty @ self.w1.T + self.b1) @ self.w2.T


def functional_field(w1, b1, w2):
    """The same field as a function of its weights (for gradcheck over them)."""

    def f(t, y):
        ty = torch.cat([y, t.expand(*y.shape[:-1], 1)], dim=-1)
        return torch.tanh(ty @ w1.T + b1) @ w2.T

    return f

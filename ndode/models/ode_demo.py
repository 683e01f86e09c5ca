"""The demo's learned vector field: a small MLP ``f_θ(y)`` with ``dy/dt = f_θ(y)``."""

from __future__ import annotations

from torch import nn

__all__ = ["ODEFunc"]


class ODEFunc(nn.Module):
    """``Linear(2, hidden) → tanh → Linear(hidden, 2)``, time-invariant.

    With ``cubic_features`` the MLP reads ``y³`` rather than ``y`` (the
    feature torchdiffeq's demo uses for this system); the flag exists so the
    harder, featureless problem is one override away.
    """

    def __init__(self, hidden: int = 50, cubic_features: bool = True, dim: int = 2):
        super().__init__()
        self.cubic_features = cubic_features
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.1)
                nn.init.zeros_(m.bias)

    def forward(self, t, y):
        return self.net(y ** 3 if self.cubic_features else y)

"""The spiral ODE of the demo experiment: noisy samples of dy/dt = A y³.

``A = [[-0.1, 2.0], [-2.0, -0.1]]``, ``y(0) = [2, 0]``, ``t`` in ``[0, 25]``
(the system torchdiffeq's ``ode_demo`` popularised; here ``A`` acts on the
column vector ``y³``, exactly as written). Every ``heldout_every``-th sample is
held out of training and scores the learned dynamics at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import odeint

__all__ = ["SPIRAL_A", "SPIRAL_Y0", "spiral_dynamics", "SpiralData", "make_spiral_data"]

SPIRAL_A = ((-0.1, 2.0), (-2.0, -0.1))
SPIRAL_Y0 = (2.0, 0.0)


def spiral_dynamics(t, y, A: torch.Tensor | None = None) -> torch.Tensor:
    """dy/dt = A y³ for states ``y`` shaped ``[..., 2]`` (rows are states, so ``y³ Aᵀ``)."""
    if A is None:
        A = torch.tensor(SPIRAL_A, dtype=y.dtype, device=y.device)
    return (y ** 3) @ A.T


@dataclass
class SpiralData:
    t: torch.Tensor  # [n]
    y_true: torch.Tensor  # [n, 2] the exact trajectory
    y_obs: torch.Tensor  # [n, 2] y_true + noise: what training sees
    heldout: torch.Tensor  # [n] bool, times never used in training
    window_starts: torch.Tensor  # [m] long, valid first indices of a training window
    window_offsets: torch.Tensor  # [batch_time] long, index offsets of a window's training times

    @property
    def y0(self) -> torch.Tensor:
        return self.y_true[0]


def make_spiral_data(n_times: int = 1000, t_end: float = 25.0, noise_std: float = 0.05, heldout_every: int = 5,
                     batch_time: int = 10, generator: torch.Generator | None = None) -> SpiralData:
    """Sample the spiral on an even grid, add Gaussian noise, and lay out training windows.

    Training windows are ``batch_time`` consecutive *training* times. Held-out
    times are every ``heldout_every``-th index (``i % heldout_every == heldout_every - 1``),
    and windows start only at indices ``≡ 0 (mod heldout_every)``, so all windows
    share one pattern of relative times and a mini-batch is one batched solve
    (the dynamics are autonomous).
    """
    if n_times < 2 or t_end <= 0:
        raise ValueError(f"need n_times >= 2 and t_end > 0, got n_times={n_times}, t_end={t_end}")
    if heldout_every < 2:
        raise ValueError(f"heldout_every must be >= 2 (1 would hold out everything), got {heldout_every}")
    if batch_time < 2:
        raise ValueError(f"batch_time must be >= 2, got {batch_time}")
    t64 = torch.linspace(0.0, t_end, n_times, dtype=torch.float64)
    y0 = torch.tensor(SPIRAL_Y0, dtype=torch.float64)
    # reference solution far tighter than any error the demo measures
    y_true = odeint(spiral_dynamics, y0, t64, rtol=1e-10, atol=1e-12, method="dopri5")
    noise = torch.randn(y_true.shape, generator=generator, dtype=torch.float64) * noise_std
    idx = torch.arange(n_times)
    heldout = (idx % heldout_every) == heldout_every - 1
    train_pattern = [o for o in range(heldout_every * batch_time) if o % heldout_every != heldout_every - 1]
    offsets = torch.tensor(train_pattern[:batch_time])
    starts = idx[(idx % heldout_every == 0) & (idx + offsets[-1] < n_times)]
    if len(starts) == 0:
        raise ValueError(f"batch_time={batch_time} windows do not fit in n_times={n_times}")
    return SpiralData(t=t64.float(), y_true=y_true.float(), y_obs=(y_true + noise).float(), heldout=heldout,
                      window_starts=starts, window_offsets=offsets)

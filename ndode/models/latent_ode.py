"""The latent ODE (Chen et al. 2018, §5 and Appendix E) and its evidence lower bound.

Generative model: ``z0 ~ N(0, I)``, ``z(t) = ODESolve(f_θ, z0, t)``,
``x(t_i) ~ N(decode(z(t_i)), σ²)``. Inference: a recognition RNN reads a
spiral's observations ``(x_i, t_i)`` from the last to the first and outputs
the mean and log-variance of ``q(z0 | x)``; the ELBO is
``E_q[log p(x | z0)] − KL(q(z0) ‖ N(0, I))``, estimated with one
reparameterised sample and the analytic KL.

Sizes are the paper's: a 25-unit recognition RNN, a 4-D latent space,
time-invariant dynamics with one hidden layer of 20 units, a decoder with one
hidden layer of 20 units. (torchdiffeq's ``examples/latent_ode.py`` has the
same recognition RNN and decoder but two hidden layers in the dynamics; we
follow the paper.)

A batch of irregularly observed spirals is solved in **one** call, at the
union of every spiral's observation times (:func:`union_of_times`); each
spiral reads its own times out of it and a mask hides the rest from the loss.

The Poisson-process variant (paper §5.1), :class:`PoissonLatentODE`: the
solve goes through :meth:`LatentODE.initial_state`, :attr:`LatentODE.ode_func`
and :meth:`LatentODE.latent_path`, which it overrides to integrate the tuple
state ``(z, Λ)`` with ``dΛ/dt = λ(z)``; the log-likelihood of the observation
times (:func:`poisson_log_likelihood`) joins the ELBO through
:func:`latent_ode_elbo`'s ``extra_log_lik``. Its observations are padded
sequences of different lengths (:class:`RecognitionRNN` takes ``lengths``) at
real times (:func:`union_of_event_times`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

import ndode

__all__ = ["RecognitionRNN", "LatentDynamics", "Decoder", "LatentODE", "union_of_times",
           "gaussian_log_likelihood", "kl_standard_normal", "latent_ode_elbo",
           "RateNetwork", "PoissonLatentODE", "union_of_event_times", "poisson_log_likelihood"]


class RecognitionRNN(nn.Module):
    """An Elman RNN (tanh) over ``(x_i, t_i)`` run backwards in time; returns ``q(z0)``'s mean and log-variance."""

    def __init__(self, obs_dim: int = 2, hidden: int = 25, latent_dim: int = 4):
        super().__init__()
        self.rnn = nn.RNN(obs_dim + 1, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 2 * latent_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, lengths: torch.Tensor | None = None):
        """``x`` ``[B, n, obs_dim]``, ``t`` ``[B, n]``; ``lengths`` ``[B]`` (optional): sequence ``b`` holds only its
        first ``lengths[b]`` entries (the rest is padding, never read)."""
        # read from the last observation to the first, so the final hidden state summarises the whole sequence
        # as seen from t0, where z0 lives
        inp = torch.cat([x, t[..., None]], dim=-1)
        if lengths is None:
            _, h = self.rnn(inp.flip(1))
        else:
            if lengths.shape != x.shape[:1] or not bool((lengths >= 1).all()) or int(lengths.max()) > x.shape[1]:
                bad = [int(v) for v in lengths.flatten()[:8]]
                raise ValueError(f"lengths (first entries {bad}) must hold one length in [1, {x.shape[1]}] per sequence "
                                 f"of the batch of {x.shape[0]}: the recognition network needs at least one "
                                 "observation per sequence")
            # each sequence reversed within its own length, then packed: padding never enters the RNN
            k = torch.arange(x.shape[1], device=x.device)
            rev = (lengths[:, None].to(k) - 1 - k).clamp_(min=0)
            inp = torch.gather(inp, 1, rev[..., None].expand_as(inp))
            packed = nn.utils.rnn.pack_padded_sequence(inp, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, h = self.rnn(packed)
        mean, logvar = self.out(h[-1]).chunk(2, dim=-1)
        return mean, logvar


class LatentDynamics(nn.Module):
    """``dz/dt = f(z)``: time-invariant, one hidden layer (ELU, as torchdiffeq's example)."""

    def __init__(self, latent_dim: int = 4, hidden: int = 20):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ELU(), nn.Linear(hidden, latent_dim))

    def forward(self, t, z):
        return self.net(z)


class Decoder(nn.Module):
    """``x = g(z)``: one hidden layer (ReLU, as torchdiffeq's example)."""

    def __init__(self, latent_dim: int = 4, hidden: int = 20, obs_dim: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, obs_dim))

    def forward(self, z):
        return self.net(z)


def union_of_times(obs_idx: torch.Tensor, n_grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid indices a batch needs solved, and where each grid index sits among them.

    ``obs_idx`` ``[B, n]`` indexes a shared time grid of ``n_grid`` times.
    Returns ``u``: the sorted union of all of them plus index 0 (the initial
    time, where ``z0`` lives), and ``pos`` ``[n_grid]``: for each grid index,
    its position in ``u`` (for an index not in ``u``, that of the nearest
    solved one; such entries are unobserved by every sequence and masked out).
    """
    u = torch.unique(torch.cat([obs_idx.reshape(-1), obs_idx.new_zeros(1)]))  # sorted
    if int(u[-1]) >= n_grid:
        raise ValueError(f"obs_idx holds index {int(u[-1])}, beyond the grid of n_grid={n_grid} times")
    grid = torch.arange(n_grid, device=obs_idx.device)
    return u, torch.searchsorted(u, grid).clamp_(max=len(u) - 1)


class LatentODE(nn.Module):
    def __init__(self, obs_dim: int = 2, latent_dim: int = 4, rec_hidden: int = 25, ode_hidden: int = 20,
                 dec_hidden: int = 20):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = RecognitionRNN(obs_dim, rec_hidden, latent_dim)
        self.dynamics = LatentDynamics(latent_dim, ode_hidden)
        self.decoder = Decoder(latent_dim, dec_hidden, obs_dim)

    # ---- the solve's three hooks (a Poisson-process variant overrides them; see the module docstring)
    @property
    def ode_func(self) -> nn.Module:
        """What the solver integrates: ``func(t, state)``."""
        return self.dynamics

    def initial_state(self, z0: torch.Tensor):
        return z0

    def latent_path(self, ys):
        """The latent trajectory ``z`` ``[T, B, latent_dim]`` out of the solver's output."""
        return ys

    # ----
    def encode(self, x: torch.Tensor, t: torch.Tensor, lengths: torch.Tensor | None = None):
        """``q(z0)``'s mean and log-variance from observations ``x`` at times ``t`` (padded: ``lengths``)."""
        return self.encoder(x, t, lengths)

    @staticmethod
    def sample_z0(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)

    def solve(self, z0: torch.Tensor, t: torch.Tensor, **solver) -> ndode.Solution:
        """Solve from ``z0`` at ``t[0]`` through ``t`` (``ndode.solve`` keyword arguments, e.g. ``adjoint=ndode.BacksolveAdjoint()``)."""
        return ndode.solve(self.ode_func, self.initial_state(z0), t, **solver)

    def trajectory(self, z0: torch.Tensor, t_grid: torch.Tensor, obs_idx: torch.Tensor | None = None, **solver):
        """``z`` on the grid ``[B, G, latent_dim]`` from one solve, and the solver's statistics.

        With ``obs_idx`` ``[B, n]`` only the union of the batch's indices is
        solved; entries at grid indices outside that union are copies of a
        neighbouring solved time and must be masked out.
        Without it, every grid time is solved.
        """
        if obs_idx is None:
            sol = self.solve(z0, t_grid, **solver)
            return self.latent_path(sol.ys).transpose(0, 1), sol.stats
        u, pos = union_of_times(obs_idx, len(t_grid))
        sol = self.solve(z0, t_grid[u], **solver)
        return self.latent_path(sol.ys)[pos].transpose(0, 1), sol.stats

    def forward(self, x_obs, t_obs, t_grid, obs_idx=None, sample: bool = True, **solver):
        """Encode, (sample,) solve and decode: ``x_pred`` on the grid ``[B, G, obs_dim]``, ``z``, ``q(z0)``, stats."""
        mean, logvar = self.encode(x_obs, t_obs)
        z0 = self.sample_z0(mean, logvar) if sample else mean
        z, stats = self.trajectory(z0, t_grid, obs_idx, **solver)
        return {"x_pred": self.decoder(z), "z": z, "z0": z0, "qz0_mean": mean, "qz0_logvar": logvar, "stats": stats}


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, std: float, mask: torch.Tensor | None = None):
    """``Σ log N(x | mean, std²)`` per sequence ``[B]`` over points ``[B, T, D]`` (only where ``mask`` ``[B, T]``)."""
    z = (x - mean) / std
    logp = -0.5 * z * z - math.log(std) - 0.5 * math.log(2 * math.pi)
    if mask is not None:
        # where, not a product: unobserved entries may hold anything (even non-finite) without reaching the sum
        logp = torch.where(mask[..., None], logp, logp.new_zeros(()))
    return logp.sum(dim=tuple(range(1, logp.dim())))


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, exp(logvar)) ‖ N(0, I))`` per row ``[B]``, in closed form."""
    return 0.5 * (torch.exp(logvar) + mean * mean - 1.0 - logvar).sum(dim=-1)


def latent_ode_elbo(x: torch.Tensor, mask: torch.Tensor, x_pred: torch.Tensor, qz0_mean: torch.Tensor,
                    qz0_logvar: torch.Tensor, obs_std: float, extra_log_lik: torch.Tensor | None = None) -> dict:
    """The ELBO per sequence, averaged over the batch, and its terms.

    ``x``, ``x_pred`` ``[B, T, D]`` on a shared grid, ``mask`` ``[B, T]``: which
    points each sequence observed. ``extra_log_lik`` ``[B]`` (optional) adds
    further log-likelihood terms (e.g. a Poisson process's ``Σ log λ − Λ``).
    """
    log_lik = gaussian_log_likelihood(x, x_pred, obs_std, mask)
    if extra_log_lik is not None:
        log_lik = log_lik + extra_log_lik
    kl = kl_standard_normal(qz0_mean, qz0_logvar)
    return {"elbo": (log_lik - kl).mean(), "log_lik": log_lik.mean(), "kl": kl.mean()}


# --------------------------------------------------------------------------- Poisson-process observation times (§5.1)


class RateNetwork(nn.Module):
    """``log λ(z)``: the log-rate of the observation process, one hidden layer (tanh) of the latent state."""

    def __init__(self, latent_dim: int = 4, hidden: int = 20):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)


class _WithIntensity(nn.Module):
    """The augmented dynamics of ``(z, Λ)``: ``dz/dt = f(z)``, ``dΛ/dt = λ(z)`` (``Λ`` ``[B, 1]``)."""

    def __init__(self, dynamics: nn.Module, log_rate: nn.Module):
        super().__init__()
        self.dynamics, self.log_rate = dynamics, log_rate

    def forward(self, t, state):
        z, _ = state
        return self.dynamics(t, z), torch.exp(self.log_rate(z))[:, None]


def union_of_event_times(times: torch.Tensor, mask: torch.Tensor, t0: float, t_end: float):
    """The sorted union ``u`` of a batch's event times (plus ``t0`` and ``t_end``) and each event's index in it.

    ``times`` ``[B, K]`` (real times, padded), ``mask`` ``[B, K]``: which are
    events. Returns ``u`` ``[U]`` and ``pos`` ``[B, K]`` with ``u[pos] == times``
    where ``mask`` (padding points at index 0). Events must lie in ``[t0, t_end]``.
    """
    ev = times[mask]
    if len(ev) and (bool((ev < t0).any()) or bool((ev > t_end).any())):
        raise ValueError(f"event times span [{float(ev.min())!r}, {float(ev.max())!r}], outside the solve's "
                         f"[t0={t0!r}, t_end={t_end!r}]")
    u = torch.unique(torch.cat([ev, ev.new_tensor([t0, t_end])]))  # sorted
    pos = torch.where(mask, torch.searchsorted(u, times.contiguous()), 0)
    return u, pos


def poisson_log_likelihood(log_rate: torch.Tensor, mask: torch.Tensor, integral: torch.Tensor) -> torch.Tensor:
    """The log-likelihood of an inhomogeneous Poisson process's events, per sequence ``[B]``.

    ``Σ_i log λ(t_i) − ∫ λ dt``: ``log_rate`` ``[B, K]`` at the events (only
    where ``mask``; padding may hold anything, even non-finite values), and the
    integral of the rate over the observed interval ``[B]``. A sequence with
    no events scores ``−∫ λ``: seeing none is evidence too.
    """
    if log_rate.shape != mask.shape or integral.shape != log_rate.shape[:1]:
        raise ValueError(f"log_rate {tuple(log_rate.shape)}, mask {tuple(mask.shape)} and integral "
                         f"{tuple(integral.shape)} must be [B, K], [B, K] and [B]")
    return torch.where(mask, log_rate, log_rate.new_zeros(())).sum(-1) - integral


class PoissonLatentODE(LatentODE):
    """The latent ODE whose observation times are a Poisson process with rate ``λ(z(t))`` (paper §5.1).

    The state is the tuple ``(z, Λ)`` with ``dΛ/dt = λ(z)``, ``Λ(t0) = 0``, so a
    single solve (with ``adjoint=``, one adjoint solve of the tuple) gives the
    latent path at the events and the rate's integral ``Λ(t_end)``: the
    log-likelihood of the times is ``Σ log λ(z(t_i)) − Λ(t_end)``
    (:func:`poisson_log_likelihood`). Rubanova et al.'s ``latent_ode`` code
    (``ODEFunc_w_Poisson``) augments the latent state the same way.

    ``poisson=False`` is the same recognition network, dynamics and decoder
    without the rate: the comparison that shows what the term buys.
    """

    def __init__(self, obs_dim: int = 2, latent_dim: int = 4, rec_hidden: int = 25, ode_hidden: int = 20,
                 dec_hidden: int = 20, rate_hidden: int = 20, poisson: bool = True):
        super().__init__(obs_dim, latent_dim, rec_hidden, ode_hidden, dec_hidden)
        self.poisson = poisson
        if poisson:
            self.log_rate = RateNetwork(latent_dim, rate_hidden)

    @property
    def ode_func(self) -> nn.Module:
        # a fresh wrapper, not a registered submodule: the parameters stay under one name each in state_dict()
        return _WithIntensity(self.dynamics, self.log_rate) if self.poisson else self.dynamics

    def initial_state(self, z0: torch.Tensor):
        return (z0, z0.new_zeros(z0.shape[0], 1)) if self.poisson else z0

    def latent_path(self, ys):
        return ys[0] if self.poisson else ys

    def rate(self, z: torch.Tensor) -> torch.Tensor:
        """The learned rate ``λ(z)`` (events per time unit)."""
        if not self.poisson:
            raise ValueError("this model was built with poisson=False: it has no rate")
        return torch.exp(self.log_rate(z))

    def solve_events(self, z0: torch.Tensor, times: torch.Tensor, mask: torch.Tensor, t_end: float, **solver) -> dict:
        """One solve from ``t = 0`` through every event of the batch to ``t_end``.

        Returns ``z`` ``[B, K, latent_dim]`` at each sequence's own events,
        ``log_rate`` ``[B, K]`` there and ``Λ`` at the events ``[B, K]`` and at
        ``t_end`` ``[B]`` (``None`` without the Poisson term), and the solver's
        statistics.
        """
        u, pos = union_of_event_times(times, mask, 0.0, t_end)
        sol = self.solve(z0, u, **solver)
        rows = torch.arange(len(z0), device=z0.device)[:, None]
        z = self.latent_path(sol.ys)[pos, rows]
        out = {"z": z, "stats": sol.stats, "log_rate": None, "Lambda": None, "Lambda_end": None}
        if self.poisson:
            big_lambda = sol.ys[1][..., 0]  # [U, B]
            out.update(log_rate=self.log_rate(z), Lambda=big_lambda[pos, rows], Lambda_end=big_lambda[-1])
        return out

"""Benchmark 10 — one training iteration of the Poisson-process latent ODE: thousands of output times.

The model and data are the experiment's (``--config-name latent_poisson``:
``ndode.models.latent_ode.PoissonLatentODE``, ``ndode.data.spiral_events``):
a mini-batch of 100 spirals observed at the events of a Poisson process,
about 45 each, so the tuple state ``(z, Λ)`` is solved from 0 through the
union of about 4,200 event times in one call. One iteration is: encode (a
packed RNN over the padded sequences), sample ``z0`` (the same noise for every
contender), solve, decode, ELBO plus the times' log-likelihood
``Σ log λ − Λ(t_end)``, backward. Weights are not updated, so every repetition
does the same work; dopri5 at the cpu budget's rtol = atol = 1e-5, an
initialised model.

Contenders: ndode with direct backpropagation, with the checkpointed adjoint
(what the cpu budget trains with) and with the backsolve adjoint (whose
backward solve must stop at every output time); torchdiffeq with direct
backpropagation and ``odeint_adjoint`` on the same augmented dynamics. What
it shows: reading thousands of outputs (ndode reads all of a step's outputs in
one contraction, torchdiffeq interpolates each separately) and what an
adjoint that stops at every output costs. Gradient difference: of all
parameters, relative to ndode's direct backpropagation.
"""

from __future__ import annotations

import pandas as pd
import torch

import ndode
from ndode.data.spiral_events import make_spiral_events
from ndode.models.latent_ode import PoissonLatentODE, latent_ode_elbo, poisson_log_likelihood, union_of_event_times

from . import peers as P
from .timing import CallCounter, gradients_then_times, variant_value

NAME = "poisson_step"
SIZES = {
    "full": dict(n_spirals=100, reps=2, warmup=1),
    "quick": dict(n_spirals=20, reps=1, warmup=0),
    "tiny": dict(n_spirals=2, reps=1, warmup=0),
}
TOL = 1e-5  # configs/budget/latent_poisson/solver/cpu.yaml
OBS_STD = 0.1
NDODE = {"direct": None, "checkpoint": ndode.CheckpointAdjoint, "backsolve": ndode.BacksolveAdjoint}


def _variants(peers):
    out = [("ndode", m) for m in NDODE]
    if "torchdiffeq" in peers and P.available("torchdiffeq"):
        out += [("torchdiffeq", "direct"), ("torchdiffeq", "adjoint")]
    return out


def run(sizes: dict, peers=P.PEERS) -> pd.DataFrame:
    torch.manual_seed(0)
    model = PoissonLatentODE()
    data = make_spiral_events(max(sizes["n_spirals"], 2), seed=0)
    x, times, lengths, mask = data.x, data.times, data.lengths, data.mask
    eps = torch.randn(len(data), model.latent_dim, generator=torch.Generator().manual_seed(1))
    u, pos = union_of_event_times(times, mask, 0.0, data.t_window)
    rows_idx = torch.arange(len(data))[:, None]
    nfe = {}

    def solve(lib, mode, z0):
        if lib == "ndode":  # the experiment's own code path
            adj = NDODE[mode]
            res = model.solve_events(z0, times, mask, data.t_window, method="dopri5", rtol=TOL, atol=TOL,
                                     adjoint=adj() if adj else None)
            return res["z"], res["log_rate"], res["Lambda_end"], (lambda: (res["stats"].nfe, res["stats"].nfe_backward))
        import torchdiffeq

        func = CallCounter(model.ode_func)
        fn = torchdiffeq.odeint_adjoint if mode == "adjoint" else torchdiffeq.odeint
        zs, lam = fn(func, model.initial_state(z0), u, rtol=TOL, atol=TOL, method="dopri5")
        n_forward = func.n
        z = zs[pos, rows_idx]
        return z, model.log_rate(z), lam[-1, :, 0], (lambda: (n_forward, func.n - n_forward if mode == "adjoint"
                                                               else None))

    def step(lib, mode):
        model.zero_grad(set_to_none=True)
        mean, logvar = model.encode(x, times, lengths)
        z0 = mean + eps * torch.exp(0.5 * logvar)
        z, log_rate, big_lambda, count = solve(lib, mode, z0)
        ll = poisson_log_likelihood(log_rate, mask, big_lambda)
        elbo = latent_ode_elbo(x, mask, model.decoder(z), mean, logvar, OBS_STD, extra_log_lik=ll)["elbo"]
        (-elbo).backward()
        nfe[(lib, mode)] = count()

    variants = _variants(peers)
    grads, tm, _ = gradients_then_times(step, variants, list(model.parameters()), sizes)
    ref = grads[("ndode", "direct")]
    out = []
    for lib, mode in variants:
        name = f"{lib} {mode}"
        out.append(dict(variant=name, library=lib, mode=mode, n_spirals=len(data), n_events=int(mask.sum()),
                        n_output_times=len(u), tol=TOL, nfe_forward=nfe[(lib, mode)][0],
                        nfe_backward=nfe[(lib, mode)][1], step_s=tm[name].wall, step_cpu_s=tm[name].cpu,
                        reps=len(tm[name].wall_samples), spread=tm[name].spread,
                        grad_rel_diff_vs_ndode_direct=float((grads[(lib, mode)] - ref).norm() / ref.norm())))
    return pd.DataFrame(out)


def verdicts(df: pd.DataFrame) -> list[tuple[str, bool]]:
    if "torchdiffeq adjoint" not in set(df.variant):
        return []
    ck, td = variant_value(df, "ndode checkpoint", "step_s"), variant_value(df, "torchdiffeq adjoint", "step_s")
    nd, tdd = variant_value(df, "ndode direct", "step_s"), variant_value(df, "torchdiffeq direct", "step_s")
    return [(f"adjoint iteration: ndode's checkpointed adjoint {ck:.2f} s vs torchdiffeq's adjoint {td:.2f} s, "
             f"ratio {ck / td:.3f} (goal ≤ 0.1)", ck <= 0.1 * td),
            (f"direct backpropagation: ndode {nd:.2f} s vs torchdiffeq {tdd:.2f} s, ratio {nd / tdd:.2f} (goal ≤ 0.5)",
             nd <= 0.5 * tdd)]


def summary(df: pd.DataFrame) -> str:
    parts = [f"{r.variant}: {r.step_s:.2f} s, NFE-F/B {r.nfe_forward}/"
             + ("–" if r.nfe_backward is None or r.nfe_backward != r.nfe_backward else f"{r.nfe_backward:.0f}")
             for r in df.itertuples()]
    return f"Poisson latent ODE iteration ({int(df.n_output_times.iloc[0])} output times): " + "; ".join(parts)


def markdown(df: pd.DataFrame) -> str:
    base = variant_value(df, "ndode direct", "step_s")
    lines = ["| variant | spirals | events | output times | tol | NFE forward | NFE backward | iteration (s) | "
             "iteration CPU (s) | ÷ ndode direct | ‖grad − ndode direct‖ / ‖·‖ |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in df.itertuples():
        back = "—" if r.nfe_backward is None or r.nfe_backward != r.nfe_backward else f"{int(r.nfe_backward)}"
        lines.append(f"| {r.variant} | {r.n_spirals} | {r.n_events} | {r.n_output_times} | {r.tol:g} | "
                     f"{r.nfe_forward} | {back} | {r.step_s:.3f} | {r.step_cpu_s:.3f} | {r.step_s / base:.2f} | "
                     f"{r.grad_rel_diff_vs_ndode_direct:.1e} |")
    return "\n".join(lines)

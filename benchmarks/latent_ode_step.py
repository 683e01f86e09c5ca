"""Benchmark 9 — one full-batch training iteration of the spiral latent ODE, ndode vs torchdiffeq.

The model and data are the experiment's (``ndode.models.latent_ode``,
``ndode.data.spirals``): 1000 spirals observed at all n = 100 window times,
a 25-unit recognition RNN, a 4-D latent ODE (one hidden layer of 20), a
decoder, the ELBO. One iteration is: encode, sample ``z0`` (same noise for
every contender), solve the latent ODE at the 100 observation times in one
call, decode, ELBO, backward. Weights are not updated, so every repetition
does the same work. Only the ODE solve differs between contenders: ndode's
``solve(..., adjoint=BacksolveAdjoint())`` vs ``torchdiffeq.odeint_adjoint`` on the same
dynamics module, both dopri5 at the cpu budget's tolerance (rtol = atol =
1e-5), each with its default adjoint norm; and, for reference, direct
backpropagation through each library's solver (what the cpu budget trains
with). NFE-F/NFE-B: ndode's own statistics; torchdiffeq's counted by a
wrapper, in the same (timed) calls. Gradient difference: of all parameters,
relative to torchdiffeq's adjoint.
"""

from __future__ import annotations

import pandas as pd
import torch

import ndode
from ndode.data.spirals import make_spirals
from ndode.models.latent_ode import LatentODE, latent_ode_elbo

from . import peers as P
from .timing import CallCounter, device_of, gradients_then_times, variant_value

NAME = "latent_ode_step"
SIZES = {
    "full": dict(n_spirals=1000, n_obs=100, reps=3, warmup=1),
    "quick": dict(n_spirals=200, n_obs=100, reps=1, warmup=0),
    "tiny": dict(n_spirals=8, n_obs=10, reps=1, warmup=0),
}
TOL = 1e-5  # configs/budget/latent_ode/solver/cpu.yaml
OBS_STD = 0.1


def _variants(peers):
    out = [("ndode", "adjoint"), ("ndode", "direct")]
    if "torchdiffeq" in peers and P.available("torchdiffeq"):
        out += [("torchdiffeq", "adjoint"), ("torchdiffeq", "direct")]
    return out


def run(sizes: dict, peers=P.PEERS) -> pd.DataFrame:
    torch.manual_seed(0)
    dev = device_of(sizes)
    model = LatentODE().to(dev)
    data = make_spirals(sizes["n_spirals"], sizes["n_obs"], noise_std=OBS_STD, seed=0)
    x_obs, t_obs = (a.to(dev) for a in data.observed())
    w = data.n_window
    t_grid, x_win, mask = data.t[:w].to(dev), data.noisy[:, :w].to(dev), data.mask.to(dev)
    eps = torch.randn(len(data), model.latent_dim, generator=torch.Generator().manual_seed(1)).to(dev)
    counter = CallCounter(model.dynamics)
    nfe = {}

    def solve(lib, mode, z0):
        if lib == "ndode":  # the experiment's own code path: the union of times, one call
            z, stats = model.trajectory(z0, t_grid, data.obs_idx, method="dopri5", rtol=TOL, atol=TOL,
                                        adjoint=ndode.BacksolveAdjoint() if mode == "adjoint" else None)
            return z, (lambda: (stats.nfe, stats.nfe_backward))
        import torchdiffeq

        from ndode.models.latent_ode import union_of_times

        u, pos = union_of_times(data.obs_idx, len(t_grid))
        fn = torchdiffeq.odeint_adjoint if mode == "adjoint" else torchdiffeq.odeint
        counter.n = 0
        ys = fn(counter, z0, t_grid[u], rtol=TOL, atol=TOL, method="dopri5")
        n_forward = counter.n
        return ys[pos].transpose(0, 1), (lambda: (n_forward, counter.n - n_forward if mode == "adjoint" else None))

    def step(lib, mode):
        model.zero_grad(set_to_none=True)
        mean, logvar = model.encode(x_obs, t_obs)
        z0 = mean + eps * torch.exp(0.5 * logvar)
        z, count = solve(lib, mode, z0)
        elbo = latent_ode_elbo(x_win, mask, model.decoder(z), mean, logvar, OBS_STD)["elbo"]
        (-elbo).backward()
        nfe[(lib, mode)] = count()

    variants = _variants(peers)
    grads, tm, reads = gradients_then_times(step, variants, list(model.parameters()), sizes)
    ref = grads.get(("torchdiffeq", "adjoint"))
    rows = []
    for lib, mode in variants:
        name = f"{lib} {mode}"
        rows.append(dict(variant=name, library=lib, mode=mode, n_spirals=len(data), n_obs=data.n_obs, tol=TOL,
                         nfe_forward=nfe[(lib, mode)][0], nfe_backward=nfe[(lib, mode)][1],
                         host_reads=reads[(lib, mode)], device=str(dev),
                         step_s=tm[name].wall, step_cpu_s=tm[name].cpu, reps=len(tm[name].wall_samples),
                         spread=tm[name].spread,
                         grad_rel_diff_vs_torchdiffeq_adjoint=(float((grads[(lib, mode)] - ref).norm() / ref.norm())
                                                               if ref is not None else float("nan"))))
    return pd.DataFrame(rows)


def verdicts(df: pd.DataFrame) -> list[tuple[str, bool]]:
    if "torchdiffeq adjoint" not in set(df.variant):
        return []
    nd, td = variant_value(df, "ndode adjoint", "step_s"), variant_value(df, "torchdiffeq adjoint", "step_s")
    return [(f"adjoint iteration: ndode {nd:.2f} s vs torchdiffeq {td:.2f} s, ratio {nd / td:.2f} (goal ≤ 0.4)",
             nd <= 0.4 * td)]


def summary(df: pd.DataFrame) -> str:
    parts = [f"{r.variant}: {r.step_s:.2f} s, NFE-F/B {r.nfe_forward}/"
             + ("–" if r.nfe_backward != r.nfe_backward or r.nfe_backward is None else f"{r.nfe_backward:.0f}")
             for r in df.itertuples()]
    line = "latent ODE iteration: " + "; ".join(parts)
    if "torchdiffeq adjoint" in set(df.variant):
        line += (f" | time ndode/torchdiffeq: adjoint "
                 f"{variant_value(df, 'ndode adjoint', 'step_s') / variant_value(df, 'torchdiffeq adjoint', 'step_s'):.2f}, direct "
                 f"{variant_value(df, 'ndode direct', 'step_s') / variant_value(df, 'torchdiffeq direct', 'step_s'):.2f}")
    return line


def markdown(df: pd.DataFrame) -> str:
    lines = ["| variant | spirals | n | tol | NFE forward | NFE backward | iteration (s) | iteration CPU (s) | "
             "÷ torchdiffeq same mode | ‖grad − torchdiffeq adjoint‖ / ‖·‖ |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in df.itertuples():
        td = variant_value(df, f"torchdiffeq {r.mode}", "step_s")
        ratio = r.step_s / td if r.library == "ndode" and td == td else float("nan")
        back = "—" if r.nfe_backward is None or r.nfe_backward != r.nfe_backward else f"{int(r.nfe_backward)}"
        lines.append(f"| {r.variant} | {r.n_spirals} | {r.n_obs} | {r.tol:g} | {r.nfe_forward} | {back} | "
                     f"{r.step_s:.3f} | {r.step_cpu_s:.3f} | {'—' if ratio != ratio else f'{ratio:.2f}'} | "
                     f"{r.grad_rel_diff_vs_torchdiffeq_adjoint:.1e} |")
    return "\n".join(lines)

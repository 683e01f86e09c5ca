"""GPU peer — ndode vs diffrax (JAX) on diffrax's own benchmark problem, solve and gradient.

The problem (the issue's statement of diffrax's published benchmark): an MLP vector field 4 → 32 → 4 (tanh
hidden layer: our choice), a batch of 64 states solved as one, t in [0, 100], dopri5 at rtol = atol = 1e-6; a
call is the solve plus the gradient of the final state's sum with respect to the MLP's parameters. Both sides
get the same weights and initial states (copied from one torch initialisation), so they integrate the same ODE.
Gradients: ndode's checkpointed adjoint and diffrax's default ``RecursiveCheckpointAdjoint``, both the exact
gradient of the discrete solve. Steps: ndode's accepted + rejected; diffrax's ``num_steps``.

Not part of ``make bench`` (the CPU suite has no JAX): ``scripts/gpu_check.py`` runs it, in its own process so
that JAX's GPU memory does not compete with torch's. Without JAX (``diffrax`` not importable) the JAX rows are
left out and the table says so.
"""

from __future__ import annotations

import os

import pandas as pd
import torch

import ndode

from .timing import device_of, interleaved, sync

NAME = "diffrax_mlp"
SIZES = {
    "full": dict(batch=64, t1=100.0, tol=1e-6, reps=5, warmup=1),
    "tiny": dict(batch=4, t1=1.0, tol=1e-3, reps=1, warmup=0),
}


def _problem(sizes):
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    y0 = torch.randn(sizes["batch"], 4, generator=torch.Generator().manual_seed(1))
    return mlp, y0


def _ndode(sizes, dev):
    mlp, y0 = _problem(sizes)
    mlp, y0 = mlp.to(dev), y0.to(dev)
    t = torch.tensor([0.0, sizes["t1"]], device=dev)
    stats = {}

    def call():
        mlp.zero_grad(set_to_none=True)
        sol = ndode.solve(lambda _t, y: mlp(y), y0, t, rtol=sizes["tol"], atol=sizes["tol"], method="dopri5",
                          adjoint=ndode.CheckpointAdjoint(params=tuple(mlp.parameters())))
        sol.ys[-1].sum().backward()
        stats["steps"] = sol.stats.n_steps
        sync()

    return call, stats


def _diffrax(sizes):
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch
    import diffrax
    import jax
    import jax.numpy as jnp

    mlp, y0 = _problem(sizes)
    params = [jnp.asarray(p.detach().numpy()) for p in mlp.parameters()]  # W1, b1, W2, b2
    y0 = jnp.asarray(y0.numpy())

    def field(_t, y, p):
        w1, b1, w2, b2 = p
        return jnp.tanh(y @ w1.T + b1) @ w2.T + b2

    def loss(p):
        sol = diffrax.diffeqsolve(diffrax.ODETerm(field), diffrax.Dopri5(), t0=0.0, t1=sizes["t1"], dt0=None, y0=y0,
                                  args=p, stepsize_controller=diffrax.PIDController(rtol=sizes["tol"], atol=sizes["tol"]),
                                  saveat=diffrax.SaveAt(t1=True), max_steps=2**16)
        return jnp.sum(sol.ys[-1]), sol.stats["num_steps"]

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    stats = {}

    def call():
        (value, steps), g = grad(params)
        jax.block_until_ready(g)
        stats["steps"] = int(steps)

    return call, stats, jax.devices()[0].platform


def run(sizes: dict, peers=None) -> pd.DataFrame:
    dev = device_of(sizes)
    fns, stats, where = {}, {}, {"ndode": str(dev)}
    fns["ndode"], stats["ndode"] = _ndode(sizes, dev)
    try:
        fns["diffrax"], stats["diffrax"], where["diffrax"] = _diffrax(sizes)
    except ImportError:
        pass
    for fn in fns.values():  # compiles diffrax's solve; fills the step counts
        fn()
    tm = interleaved(fns, reps=sizes["reps"], warmup=sizes["warmup"], target_s=None)
    return pd.DataFrame([dict(variant=name, device=where[name], batch=sizes["batch"], t1=sizes["t1"], tol=sizes["tol"],
                              steps=stats[name]["steps"], call_s=tm[name].wall, reps=len(tm[name].wall_samples))
                         for name in fns])


def summary(df: pd.DataFrame) -> str:
    parts = [f"{r.variant} ({r.device}): {r.call_s:.3f} s, {r.steps} steps" for r in df.itertuples()]
    if "diffrax" not in set(df.variant):
        parts.append("diffrax not installed")
    else:
        t = dict(zip(df.variant, df.call_s))
        parts.append(f"ndode/diffrax time {t['ndode'] / t['diffrax']:.2f}")
    return "diffrax MLP 4-32-4: " + "; ".join(parts)

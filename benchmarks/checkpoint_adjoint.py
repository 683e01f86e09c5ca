"""Benchmark 8 — three ways to a gradient: backsolve adjoint, checkpointed adjoint, direct backpropagation.

The latent ODE's dynamics (issue 17): a 4-D state, an MLP with two hidden
layers of 20 units (tanh), batch 1000, float32, dopri5 over t in [0, 5] with
100 output times and a loss on every output, sum_i <w_i, y(t_i)>. One
training iteration (forward + backward) is timed for each method, interleaved
in one run (rotating order, median of the repetitions); torchdiffeq's adjoint
(its default norm) runs alongside when installed. "Saved" is what autograd
keeps for the backward pass after the forward (``ndode.memory``, parameters
excluded). "vs direct" is the relative difference of the parameter gradient
from direct backpropagation's at the same tolerance (the checkpointed adjoint
computes the same numbers); "vs exact" from a float64 solve at rtol = atol =
1e-10.

The MNIST ODE-Net (``build_mnist_model("odenet")``: dopri5, rtol = atol =
1e-3, one ODE block of 64-channel convolutions, batch 128 of random images,
float32) is the second case: one training step with each method,
``adjoint="none"`` being the paper's RK-Net.

Memory against the number of steps (no timing): one rk4 solve of an MLP ODE
(32-D state, hidden 128, tanh, batch 128, float32; the setup of benchmark 4)
with 10, 100 and 1000 steps, bytes saved for backward by each method; and at
the most steps, the checkpointed adjoint's recomputation under a cap
(``max_stored_steps``): backward over forward evaluations.
"""

from __future__ import annotations

import copy

import pandas as pd
import torch

import ndode
from ndode.memory import saved_tensor_bytes

from . import peers as P
from .problems import MLPODE
from .timing import CallCounter, interleaved

NAME = "checkpoint_adjoint"
SIZES = {
    "full": dict(tols=(1e-3, 1e-5), batch=1000, n_out=100, reps=5, warmup=1, odenet_batch=128, odenet_reps=3,
                 memory_steps=(10, 100, 1000), caps=(100, 10, 4)),
    "quick": dict(tols=(1e-3,), batch=1000, n_out=100, reps=2, warmup=1, odenet_batch=32, odenet_reps=1,
                  memory_steps=(10, 100), caps=(10,)),
    "tiny": dict(tols=(1e-3,), batch=4, n_out=5, reps=1, warmup=0, odenet_batch=2, odenet_reps=1,
                 memory_steps=(10,), caps=(4,)),
}
T1 = 5.0
METHODS = ("direct", "backsolve", "checkpoint")


def _variants(peers):
    out = [("ndode", m) for m in METHODS]
    if "torchdiffeq" in peers and P.available("torchdiffeq"):
        out.append(("torchdiffeq", "backsolve"))
    return out


def _label(lib, method):
    return f"{lib} {method}"


def _solve(lib, method, func, y0, t, tol):
    """ys and the solve's stats (None for torchdiffeq)."""
    if lib == "ndode":
        adjoint = {"direct": None, "backsolve": ndode.BacksolveAdjoint(), "checkpoint": ndode.CheckpointAdjoint()}
        sol = ndode.solve(func, y0, t, rtol=tol, atol=tol, adjoint=adjoint[method])
        return sol.ys, sol.stats
    import torchdiffeq

    return torchdiffeq.odeint_adjoint(func, y0, t, rtol=tol, atol=tol, method="dopri5"), None


def run(sizes: dict, peers=P.PEERS) -> pd.DataFrame:
    return pd.concat([run_latent(sizes, peers), run_odenet(sizes), run_memory(sizes)], ignore_index=True)


def run_memory(sizes: dict) -> pd.DataFrame:
    func = MLPODE(dim=32, hidden=128, seed=0)
    y0 = torch.randn(128, 32, generator=torch.Generator().manual_seed(0))
    adjoint = {"direct": lambda: None, "backsolve": ndode.BacksolveAdjoint, "checkpoint": ndode.CheckpointAdjoint}
    rows = []
    for n in sizes["memory_steps"]:
        for method in METHODS:
            saved = saved_tensor_bytes(
                lambda: ndode.solve(func, y0, [0.0, 1.0], method="rk4", options={"step_size": 1.0 / n},
                                    adjoint=adjoint[method]()).ys, ignore=list(func.parameters()))
            rows.append(dict(problem="memory", tol=float("nan"), variant=_label("ndode", method), library="ndode",
                             method=method, n_out=2, batch=128, steps=n, saved_bytes=saved))
    n = max(sizes["memory_steps"])
    for cap in (None, *sizes["caps"]):
        adj = ndode.CheckpointAdjoint(max_stored_steps=cap)
        saved = saved_tensor_bytes(
            lambda: ndode.solve(func, y0, [0.0, 1.0], method="rk4", options={"step_size": 1.0 / n}, adjoint=adj).ys,
            ignore=list(func.parameters()))
        sol = ndode.solve(func, y0, [0.0, 1.0], method="rk4", options={"step_size": 1.0 / n}, adjoint=adj)
        sol.ys[-1].sum().backward()
        rows.append(dict(problem="cap", tol=float("nan"), variant=f"ndode checkpoint (max_stored_steps={cap})",
                         library="ndode", method="checkpoint", max_stored_steps=cap, n_out=2, batch=128, steps=n,
                         saved_bytes=saved, nfe_forward=sol.stats.nfe, nfe_backward=sol.stats.nfe_backward))
    return pd.DataFrame(rows)


def run_odenet(sizes: dict) -> pd.DataFrame:
    from ndode.models.mnist import build_mnist_model
    from ndode.models.odeblock import ode_blocks

    torch.manual_seed(0)
    base = build_mnist_model("odenet")
    g = torch.Generator().manual_seed(0)
    n = sizes["odenet_batch"]
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    loss_fn = torch.nn.CrossEntropyLoss()
    models, info, grads = {}, {}, {}
    for method in METHODS:
        m = copy.deepcopy(base).train()
        block = next(ode_blocks(m))
        block.adjoint = None if method == "direct" else ndode.ADJOINTS[method]()
        models[method] = m
        params = list(m.parameters())
        saved = saved_tensor_bytes(lambda: loss_fn(m(x), y), ignore=params)
        m.zero_grad(set_to_none=True)
        loss_fn(m(x), y).backward()
        grads[method] = torch.cat([p.grad.reshape(-1) for p in block.func.parameters()]).double()
        info[method] = (block.last_stats.nfe, block.last_stats.nfe_backward, saved, block.last_stats.n_accepted)

    def step(m):
        m.zero_grad(set_to_none=True)
        loss_fn(m(x), y).backward()

    tm = interleaved({k: (lambda m=m: step(m)) for k, m in models.items()}, reps=sizes["odenet_reps"], warmup=0,
                     target_s=None)
    rows = []
    for method in METHODS:
        nf, nb, saved, steps = info[method]
        diff = float((grads[method] - grads["direct"]).norm() / grads["direct"].norm())
        rows.append(dict(problem="odenet", tol=1e-3, variant=_label("ndode", method), library="ndode", method=method,
                         n_out=1, batch=n, steps=steps, nfe_forward=nf, nfe_backward=nb, saved_bytes=saved,
                         grad_vs_direct=diff, grad_vs_exact=float("nan"), iter_s=tm[method].wall,
                         iter_cpu_s=tm[method].cpu, reps=len(tm[method].wall_samples)))
    return pd.DataFrame(rows)


def run_latent(sizes: dict, peers=P.PEERS) -> pd.DataFrame:
    func = MLPODE(dim=4, hidden=20, layers=2, seed=0)  # scale 3: NFE-F 50 at 1e-3, as in the measurement
    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(sizes["batch"], 4, generator=g)
    t = torch.linspace(0.0, T1, sizes["n_out"])
    w = torch.randn(sizes["n_out"], sizes["batch"], 4, generator=g)
    params = list(func.parameters())

    def flat_grad(f):
        return torch.cat([p.grad.reshape(-1) for p in f.parameters()]).double()

    f64 = copy.deepcopy(func).double()
    (ndode.odeint(f64, y0.double(), t.double(), rtol=1e-10, atol=1e-10) * w.double()).sum().backward()
    exact = flat_grad(f64)
    rows = []
    for tol in sizes["tols"]:
        info, fns, grads = {}, {}, {}
        for lib, method in _variants(peers):
            name = _label(lib, method)
            counter = CallCounter(func)
            func.zero_grad(set_to_none=True)
            ys, stats = _solve(lib, method, counter, y0, t, tol)
            nf = counter.n
            (ys * w).sum().backward()
            grads[name] = flat_grad(func)
            nb = counter.n - nf if method != "direct" else None
            saved = saved_tensor_bytes(lambda: _solve(lib, method, func, y0, t, tol)[0], ignore=params)
            info[name] = (nf, nb, saved, stats.n_accepted if stats is not None else None)

            def step(lib=lib, method=method):
                func.zero_grad(set_to_none=True)
                (_solve(lib, method, func, y0, t, tol)[0] * w).sum().backward()

            fns[name] = step
        func.zero_grad(set_to_none=True)
        tm = interleaved(fns, reps=sizes["reps"], warmup=sizes["warmup"], target_s=None)
        direct = grads[_label("ndode", "direct")]
        for lib, method in _variants(peers):
            name = _label(lib, method)
            nf, nb, saved, steps = info[name]
            rows.append(dict(problem="latent", tol=tol, variant=name, library=lib, method=method, n_out=sizes["n_out"],
                             batch=sizes["batch"], steps=steps, nfe_forward=nf, nfe_backward=nb, saved_bytes=saved,
                             grad_vs_direct=float((grads[name] - direct).norm() / direct.norm()),
                             grad_vs_exact=float((grads[name] - exact).norm() / exact.norm()),
                             iter_s=tm[name].wall, iter_cpu_s=tm[name].cpu, reps=len(tm[name].wall_samples)))
    return pd.DataFrame(rows)


def _pick(g, variant, col):
    r = g.loc[g.variant == variant, col]
    return float(r.iloc[0]) if len(r) else float("nan")


def ratios(g) -> dict:
    """Checkpoint's time over direct's and over backsolve's; its saved bytes over direct's."""
    ck = _pick(g, "ndode checkpoint", "iter_s")
    return dict(vs_direct=ck / _pick(g, "ndode direct", "iter_s"), vs_backsolve=ck / _pick(g, "ndode backsolve", "iter_s"),
                saved_vs_direct=_pick(g, "ndode checkpoint", "saved_bytes") / _pick(g, "ndode direct", "saved_bytes"))


def verdicts(df: pd.DataFrame) -> list[tuple[str, bool]]:
    out = []
    for tol, g in df[df.problem == "latent"].groupby("tol"):
        r = ratios(g)
        out.append((f"latent ODE, rtol {tol:.0e}: checkpoint {r['vs_direct']:.2f}× direct backprop's time (goal ≤ 2)",
                    r["vs_direct"] <= 2.0))
        out.append((f"latent ODE, rtol {tol:.0e}: checkpoint {r['vs_backsolve']:.2f}× the backsolve adjoint's time "
                    "(goal ≤ 0.2)", r["vs_backsolve"] <= 0.2))
    g = df[df.problem == "odenet"]
    if len(g):
        r = ratios(g)
        out.append((f"ODE-Net: checkpoint {r['vs_backsolve']:.2f}× the backsolve adjoint's time (goal < 1)",
                    r["vs_backsolve"] < 1.0))
        out.append((f"ODE-Net: checkpoint saves {r['saved_vs_direct']:.3f}× RK-Net's bytes (goal < 0.5)",
                    r["saved_vs_direct"] < 0.5))
    return out


def summary(df: pd.DataFrame) -> str:
    parts = []
    for (problem, tol), g in df[df.problem.isin(["latent", "odenet"])].groupby(["problem", "tol"], sort=False):
        r = ratios(g)
        parts.append(f"{problem} rtol {tol:.0e}: time ×{r['vs_direct']:.2f} direct, ×{r['vs_backsolve']:.2f} "
                     f"backsolve; saved ×{r['saved_vs_direct']:.3f} direct")
    return "checkpointed adjoint: " + "; ".join(parts)


def markdown(df: pd.DataFrame) -> str:
    lines = ["| problem | rtol = atol | variant | steps | NFE-F | NFE-B | saved (MiB) | iteration (ms) | ÷ direct (time) | "
             "CPU time (ms) | ÷ direct (CPU time) | grad vs direct | grad vs exact |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (problem, tol), g in df[df.problem.isin(["latent", "odenet"])].groupby(["problem", "tol"], sort=False):
        td, tc = _pick(g, "ndode direct", "iter_s"), _pick(g, "ndode direct", "iter_cpu_s")
        for r in g.itertuples():
            nb = "—" if r.nfe_backward is None or r.nfe_backward != r.nfe_backward else f"{int(r.nfe_backward)}"
            steps = "—" if r.steps is None or r.steps != r.steps else f"{int(r.steps)}"
            exact = "—" if r.grad_vs_exact != r.grad_vs_exact else f"{r.grad_vs_exact:.1e}"
            lines.append(f"| {problem} | {tol:.0e} | {r.variant} | {steps} | {int(r.nfe_forward)} | {nb} | "
                         f"{r.saved_bytes / 2**20:.2f} | "
                         f"{r.iter_s * 1e3:.1f} | {r.iter_s / td:.2f} | {r.iter_cpu_s * 1e3:.1f} | {r.iter_cpu_s / tc:.2f} | "
                         f"{r.grad_vs_direct:.1e} | {exact} |")
    mem = df[df.problem == "memory"]
    if len(mem):
        lines += ["", "| rk4 steps | " + " | ".join(f"{m}: saved for backward" for m in METHODS) + " |",
                  "| ---: |" + " ---: |" * len(METHODS)]
        for steps, g in mem.groupby("steps"):
            cells = [f"{_pick(g, _label('ndode', m), 'saved_bytes') / 2**10:,.1f} KiB" for m in METHODS]
            lines.append(f"| {int(steps)} | " + " | ".join(cells) + " |")
    cap = df[df.problem == "cap"]
    if len(cap):
        lines += ["", "| rk4 steps | max_stored_steps | saved for backward | NFE-B ÷ NFE-F |", "| ---: | ---: | ---: | ---: |"]
        for r in cap.itertuples():
            m = "none" if r.max_stored_steps != r.max_stored_steps or r.max_stored_steps is None else int(r.max_stored_steps)
            lines.append(f"| {int(r.steps)} | {m} | {r.saved_bytes / 2**10:,.1f} KiB | "
                         f"{r.nfe_backward / r.nfe_forward:.2f} |")
    return "\n".join(lines)

"""Benchmark 3 — one ODE-Net training step (the paper's MNIST model), ndode adjoint vs torchdiffeq adjoint.

The model is ``build_mnist_model("odenet")`` (dopri5, rtol = atol = 1e-3 over
[0, 1], adjoint gradients). For torchdiffeq a deep copy of the same model gets
an ODE block that calls ``torchdiffeq.odeint_adjoint`` on the *same* dynamics
module, so both start from identical weights. A step is: zero the gradients,
forward a random batch (no MNIST needed: the solver's work depends on the
weights and the input statistics, and both sides get the same batch), cross
entropy, backward. Weights are not updated, so every repetition does the same
work and NFE are exact, not averages. The norm of the adjoint's error estimate
is varied: "full" (torchdiffeq's default) and "seminorm" (ndode's default;
Kidger et al. 2021, which torchdiffeq also offers).

Gradient accuracy is checked on the first 8 images only (a float64 reference
for 128 would need ~14 GB): each variant's gradient of the loss with respect
to the dynamics' parameters against direct backpropagation through an ndode
solve in float64 at rtol = atol = 1e-7 (independent of both adjoint codes).
At tol 1e-3 every solver's gradient is rough; the column shows by how much.
"""

from __future__ import annotations

import copy

import pandas as pd
import torch
from torch import nn

import ndode
from ndode.models.mnist import build_mnist_model

from . import peers as P
from .timing import CallCounter, HostReads, device_of, interleaved, variant_value

NAME = "odenet_step"
SIZES = {
    "full": dict(batch=128, reps=5, warmup=1, check_batch=8, check_tol=1e-7),
    "quick": dict(batch=32, reps=1, warmup=0, check_batch=0, check_tol=None),
    "tiny": dict(batch=2, reps=1, warmup=0, check_batch=1, check_tol=1e-4),
}
TOL = 1e-3


class NdodeBlock(nn.Module):
    """The same solve as ``ODEBlock``, with the adjoint's norm selectable."""

    def __init__(self, func, norm):
        super().__init__()
        self.func, self.norm = func, norm
        self.stats = None

    def forward(self, x):
        t = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
        sol = ndode.solve(self.func, x, t, rtol=TOL, atol=TOL, method="dopri5",
                          adjoint=ndode.BacksolveAdjoint(options={"norm": self.norm}))
        self.stats = sol.stats
        return sol.ys[-1]

    def nfe(self):
        return self.stats.nfe, self.stats.nfe_backward


class DirectBlock(nn.Module):
    """Backpropagation through an ndode solve (no adjoint): the gradient reference."""

    def __init__(self, func, tol):
        super().__init__()
        self.func, self.tol = func, tol

    def forward(self, x):
        t = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
        return ndode.odeint(self.func, x, t, rtol=self.tol, atol=self.tol)[-1]


class TorchdiffeqBlock(nn.Module):
    """ODE block on torchdiffeq: ``odeint_adjoint(func, x, [0, 1], rtol=1e-3, atol=1e-3)``."""

    def __init__(self, func, norm):
        super().__init__()
        self.func = CallCounter(func)  # torchdiffeq reports no NFE; a counter is ~1 µs against a ~10 ms func
        self.norm = norm
        self.n_forward = 0

    def forward(self, x):
        import torchdiffeq

        t = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
        opts = {"norm": "seminorm"} if self.norm == "seminorm" else None
        self.func.n = 0
        ys = torchdiffeq.odeint_adjoint(self.func, x, t, rtol=TOL, atol=TOL, method="dopri5", adjoint_options=opts)
        self.n_forward = self.func.n
        return ys[-1]

    def nfe(self):
        return self.n_forward, self.func.n - self.n_forward


def _variants(peers):
    out = [("ndode", "seminorm"), ("ndode", "full")]
    if "torchdiffeq" in peers and P.available("torchdiffeq"):
        out += [("torchdiffeq", "full"), ("torchdiffeq", "seminorm")]
    return out


def run(sizes: dict, peers=P.PEERS) -> pd.DataFrame:
    torch.manual_seed(0)
    dev = device_of(sizes)
    base = build_mnist_model("odenet").to(dev)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sizes["batch"], 1, 28, 28, generator=g).to(dev)
    y = torch.randint(0, 10, (sizes["batch"],), generator=g).to(dev)
    loss_fn = nn.CrossEntropyLoss()
    models = {}
    for lib, norm in _variants(peers):
        m = copy.deepcopy(base)
        if not (lib == "ndode" and norm == "seminorm"):  # that one keeps the model's own ODEBlock
            m.features = (NdodeBlock if lib == "ndode" else TorchdiffeqBlock)(m.features.func, norm)
        models[f"{lib} ({norm})"] = m.train()

    def step(m):
        m.zero_grad(set_to_none=True)
        loss_fn(m(x), y).backward()

    def nfe(m):
        block = m.features
        if isinstance(block, (NdodeBlock, TorchdiffeqBlock)):
            return block.nfe()
        return block.nfe_forward, block.nfe_backward

    counts, grads, reads = {}, {}, {}
    for name, m in models.items():
        with HostReads() as r:
            step(m)
        reads[name] = r.total
        counts[name] = nfe(m)
        grads[name] = torch.cat([p.grad.reshape(-1) for p in m.features.func.parameters()])
    tm = interleaved({n: (lambda m=m: step(m)) for n, m in models.items()},
                     reps=sizes["reps"], warmup=sizes["warmup"], target_s=None)
    ref = grads.get("torchdiffeq (full)")
    check = {}
    if sizes["check_batch"]:
        xs, ys_ = x[: sizes["check_batch"]], y[: sizes["check_batch"]]

        def func_grads(m, dtype):
            m.zero_grad(set_to_none=True)
            loss_fn(m(xs.to(dtype)), ys_).backward()
            return torch.cat([p.grad.reshape(-1) for p in m.features.func.parameters()]).double()

        reference = copy.deepcopy(base).double()
        reference.features = DirectBlock(reference.features.func, sizes["check_tol"])
        g_ref = func_grads(reference, torch.float64)
        del reference
        check = {n: float((func_grads(m, torch.float32) - g_ref).norm() / g_ref.norm()) for n, m in models.items()}
    rows = []
    for name in models:
        lib, norm = name.split(" (")
        rows.append(dict(variant=name, library=lib, norm=norm.rstrip(")"), batch=sizes["batch"],
                         nfe_forward=counts[name][0], nfe_backward=counts[name][1], host_reads=reads[name],
                         device=str(dev),
                         step_s=tm[name].wall, step_cpu_s=tm[name].cpu, reps=len(tm[name].wall_samples),
                         spread=tm[name].spread,
                         grad_rel_diff_vs_torchdiffeq_full=(float((grads[name] - ref).norm() / ref.norm())
                                                            if ref is not None else float("nan")),
                         grad_rel_error_check=check.get(name, float("nan")), check_batch=sizes["check_batch"]))
    return pd.DataFrame(rows)


def verdicts(df: pd.DataFrame) -> list[tuple[str, bool]]:
    if "torchdiffeq (full)" not in set(df.variant):
        return []
    nd_t, td_t = variant_value(df, "ndode (seminorm)", "step_s"), variant_value(df, "torchdiffeq (full)", "step_s")
    nd_b, td_b = variant_value(df, "ndode (seminorm)", "nfe_backward"), variant_value(df, "torchdiffeq (full)", "nfe_backward")
    return [
        (f"step time: ndode (default, seminorm) {nd_t:.2f} s vs torchdiffeq (default) {td_t:.2f} s, "
         f"ratio {nd_t / td_t:.2f} (goal ≤ 1)", nd_t <= td_t),
        (f"backward NFE: ndode {nd_b:.0f} vs torchdiffeq default {td_b:.0f} (goal: below)", nd_b < td_b),
    ]


def summary(df: pd.DataFrame) -> str:
    parts = [f"{r.variant}: {r.step_s:.2f} s, NFE-F/B {r.nfe_forward}/{r.nfe_backward}" for r in df.itertuples()]
    line = "odenet step: " + "; ".join(parts)
    if "torchdiffeq (full)" in set(df.variant):
        line += (f" | time ndode/torchdiffeq: default {variant_value(df, 'ndode (seminorm)', 'step_s') / variant_value(df, 'torchdiffeq (full)', 'step_s'):.2f}, "
                 f"same norm full {variant_value(df, 'ndode (full)', 'step_s') / variant_value(df, 'torchdiffeq (full)', 'step_s'):.2f}, "
                 f"seminorm {variant_value(df, 'ndode (seminorm)', 'step_s') / variant_value(df, 'torchdiffeq (seminorm)', 'step_s'):.2f}")
    return line


def markdown(df: pd.DataFrame) -> str:
    td = {n: variant_value(df, f"torchdiffeq ({n})", "step_s") for n in ("full", "seminorm")}
    lines = ["| variant | NFE forward | NFE backward | step (s) | step CPU (s) | ÷ torchdiffeq same norm | "
             "‖grad − torchdiffeq (full)‖ / ‖·‖ | grad error vs float64 reference (8 images) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in df.itertuples():
        check = getattr(r, "grad_rel_error_check", float("nan"))
        ratio = r.step_s / td[r.norm] if r.library == "ndode" and td[r.norm] == td[r.norm] else float("nan")
        lines.append(f"| {r.variant} | {r.nfe_forward} | {r.nfe_backward} | {r.step_s:.3f} | {r.step_cpu_s:.3f} | "
                     f"{'—' if ratio != ratio else f'{ratio:.2f}'} | {r.grad_rel_diff_vs_torchdiffeq_full:.1e} | "
                     f"{'—' if check != check else f'{check:.1e}'} |")
    return "\n".join(lines)

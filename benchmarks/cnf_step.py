"""Benchmark 7 — one training iteration of the paper's Figure 5 CNF, ndode adjoint vs torchdiffeq adjoint.

The model is the hypernetwork CNF of ``experiments/cnf.py`` (M = 64 units, hypernetwork width 32,
t in [0, 10], base N(0, 0.1 I)); the data a batch of 512 Two Circles points. An iteration is: zero the
gradients, ``−mean log p(x)`` (the tuple state ``(z, Δlog p)`` integrated from t = 10 to 0 with dopri5 at
rtol = atol = 1e-5), backward by the adjoint. torchdiffeq gets the *same* module as its ``func``
(``odeint_adjoint`` on the tuple state), so both use identical weights, data and tolerances; the weights are
not updated, so every repetition does the same work. The contenders run interleaved (rotating order).
Norms of the backward error estimate: ndode's default ``seminorm`` and ``full`` (torchdiffeq's default),
and torchdiffeq with each. The model is at its initial weights (seed 0): a trained one takes more steps
(the issue measured NFE-F 164 / NFE-B ≈ 160 after 1000 iterations with torchdiffeq), which scales both
libraries' time alike, since their per-evaluation cost is what differs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import ndode
from ndode.data.toy2d import sample_data
from ndode.models.cnf import CNF, HyperPlanarDynamics

from . import peers as P
from .timing import CallCounter, HostReads, device_of, interleaved, variant_value

NAME = "cnf_step"
SIZES = {
    "full": dict(width=64, batch=512, reps=5, warmup=1),
    "quick": dict(width=16, batch=64, reps=1, warmup=0),
    "tiny": dict(width=4, batch=16, reps=1, warmup=0),
}
TOL = 1e-5
T1 = 10.0


def _model(width):
    torch.manual_seed(0)
    return CNF(HyperPlanarDynamics(2, width, 32), t1=T1, base_var=0.1,
               solver=dict(method="dopri5", rtol=TOL, atol=TOL, adjoint=ndode.BacksolveAdjoint()))


def _variants(peers):
    out = [("ndode", "seminorm"), ("ndode", "full")]
    if "torchdiffeq" in peers and P.available("torchdiffeq"):
        out += [("torchdiffeq", "full"), ("torchdiffeq", "seminorm")]
    return out


def run(sizes: dict, peers=P.PEERS) -> pd.DataFrame:
    dev = device_of(sizes)
    model = _model(sizes["width"]).to(dev)
    x = sample_data("circles", sizes["batch"], np.random.default_rng(0)).to(dev)
    zero = torch.zeros(x.shape[0], device=dev)
    t = torch.tensor([T1, 0.0], device=dev)
    counter = CallCounter(model)  # torchdiffeq reports no NFE
    last = {}

    def neg_loglik(zs, deltas):
        from ndode.models.planar import standard_normal_logpdf

        return -(standard_normal_logpdf(zs[-1], model.base_var) - deltas[-1]).mean()

    def ndode_step(norm):
        model.zero_grad(set_to_none=True)
        sol = ndode.solve(model, (x, zero), t, rtol=TOL, atol=TOL, method="dopri5",
                          adjoint=ndode.BacksolveAdjoint(options={"norm": norm}))
        neg_loglik(*sol.ys).backward()
        last[("ndode", norm)] = (sol.stats.nfe, sol.stats.nfe_backward)

    def torchdiffeq_step(norm):
        import torchdiffeq

        model.zero_grad(set_to_none=True)
        counter.n = 0
        opts = {"norm": "seminorm"} if norm == "seminorm" else None
        zs, deltas = torchdiffeq.odeint_adjoint(counter, (x, zero), t, rtol=TOL, atol=TOL, method="dopri5",
                                                adjoint_options=opts, adjoint_params=tuple(model.parameters()))
        nf = counter.n
        neg_loglik(zs, deltas).backward()
        last[("torchdiffeq", norm)] = (nf, counter.n - nf)

    fns = {}
    for lib, norm in _variants(peers):
        step = ndode_step if lib == "ndode" else torchdiffeq_step
        fns[f"{lib} ({norm})"] = (lambda step=step, norm=norm: step(norm))
    grads, reads = {}, {}
    for name, fn in fns.items():
        with HostReads() as r:
            fn()
        reads[name] = r.total
        grads[name] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    tm = interleaved(fns, reps=sizes["reps"], warmup=sizes["warmup"], target_s=None)
    ref = grads.get("torchdiffeq (full)")
    rows = []
    for name in fns:
        lib, norm = name.split(" (")
        norm = norm.rstrip(")")
        nf, nb = last[(lib, norm)]
        rows.append(dict(variant=name, library=lib, norm=norm, width=sizes["width"], batch=sizes["batch"],
                         nfe_forward=nf, nfe_backward=nb, host_reads=reads[name], device=str(dev),
                         step_s=tm[name].wall, step_cpu_s=tm[name].cpu,
                         reps=len(tm[name].wall_samples), spread=tm[name].spread,
                         grad_rel_diff_vs_torchdiffeq_full=(float((grads[name] - ref).norm() / ref.norm())
                                                            if ref is not None else float("nan"))))
    return pd.DataFrame(rows)


def verdicts(df: pd.DataFrame) -> list[tuple[str, bool]]:
    if "torchdiffeq (full)" not in set(df.variant):
        return []
    nd, td = variant_value(df, "ndode (seminorm)", "step_s"), variant_value(df, "torchdiffeq (full)", "step_s")
    nd_f = variant_value(df, "ndode (full)", "step_s")  # torchdiffeq's default is the full norm: the same td
    return [(f"CNF iteration: ndode (default, seminorm) {nd:.3f} s vs torchdiffeq (default) {td:.3f} s, "
             f"ratio {nd / td:.2f} (goal ≤ 0.5)", nd / td <= 0.5),
            (f"same norm (full): ndode {nd_f:.3f} s vs torchdiffeq {td:.3f} s, ratio {nd_f / td:.2f} "
             "(goal ≤ 0.5)", nd_f / td <= 0.5)]


def summary(df: pd.DataFrame) -> str:
    parts = [f"{r.variant}: {r.step_s:.3f} s, NFE-F/B {r.nfe_forward}/{r.nfe_backward}" for r in df.itertuples()]
    line = "cnf step: " + "; ".join(parts)
    if "torchdiffeq (full)" in set(df.variant):
        t = {v: variant_value(df, v, "step_s") for v in df.variant}
        line += (f" | time ndode/torchdiffeq: default {t['ndode (seminorm)'] / t['torchdiffeq (full)']:.2f}, "
                 f"same norm full {t['ndode (full)'] / t['torchdiffeq (full)']:.2f}, "
                 f"seminorm {t['ndode (seminorm)'] / t['torchdiffeq (seminorm)']:.2f}")
    return line


def markdown(df: pd.DataFrame) -> str:
    td = {n: variant_value(df, f"torchdiffeq ({n})", "step_s") for n in ("full", "seminorm")}
    lines = ["| variant | NFE forward | NFE backward | iteration (s) | iteration CPU (s) | ÷ torchdiffeq same norm | "
             "‖grad − torchdiffeq (full)‖ / ‖·‖ |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in df.itertuples():
        ratio = r.step_s / td[r.norm] if r.library == "ndode" and td[r.norm] == td[r.norm] else float("nan")
        lines.append(f"| {r.variant} | {r.nfe_forward} | {r.nfe_backward} | {r.step_s:.3f} | {r.step_cpu_s:.3f} | "
                     f"{'—' if ratio != ratio else f'{ratio:.2f}'} | {r.grad_rel_diff_vs_torchdiffeq_full:.1e} |")
    return "\n".join(lines)

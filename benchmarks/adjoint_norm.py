"""Backward-solve error control on the MNIST ODE-Net: "seminorm" vs "full" norm.

The seminorm (Kidger et al. 2021) leaves the parameter-adjoint channels out of
the backward solve's error estimate. This measures, on the paper's ODE-Net
(batch 128, dopri5, rtol = atol = 1e-3) during the first steps of real MNIST
training: NFE of the backward solve under each norm, from the same forward
solve, and how far apart the two parameter gradients are.

    .venv/bin/python benchmarks/adjoint_norm.py [--steps 20] [--every 10] [--batches 1] [--tol 1e-3]

Writes results/bench/adjoint_norm_tol<tol>.csv and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import torch

import ndode
from ndode.data.mnist import mnist_datasets
from ndode.models.mnist import build_mnist_model
from ndode.models.odeblock import ode_blocks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="SGD training steps (seminorm) between measurements")
    ap.add_argument("--every", type=int, default=10, help="measure after every this many steps")
    ap.add_argument("--batches", type=int, default=2, help="batches per measurement")
    ap.add_argument("--tol", type=float, default=1e-3, help="rtol = atol of the forward and backward solves")
    ap.add_argument("--root", default="data")
    ap.add_argument("--out", default=None, help="CSV path (default results/bench/adjoint_norm_tol<tol>.csv)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train, _ = mnist_datasets(args.root)
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True, drop_last=True)
    model = build_mnist_model("odenet", rtol=args.tol, atol=args.tol)
    block = next(ode_blocks(model))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lossf = torch.nn.CrossEntropyLoss()
    it = iter(loader)
    rows = []
    for step in range(args.steps + 1):
        x, y = next(it)
        if step % args.every == 0:
            for b in range(args.batches):
                xb, yb = (x, y) if b == 0 else next(it)
                grads, nfe_b = {}, {}
                for norm in ("seminorm", "full"):
                    block.adjoint = ndode.BacksolveAdjoint(options={"norm": norm})
                    model.zero_grad()
                    lossf(model(xb), yb).backward()
                    grads[norm] = torch.cat([p.grad.reshape(-1) for p in block.func.parameters()])
                    nfe_b[norm] = block.nfe_backward
                    nfe_f = block.nfe_forward
                rel = ((grads["seminorm"] - grads["full"]).norm() / grads["full"].norm()).item()
                rows.append(dict(tol=args.tol, step=step, batch=b, nfe_forward=nfe_f, nfe_backward_seminorm=nfe_b["seminorm"],
                                 nfe_backward_full=nfe_b["full"], grad_rel_diff=rel))
                print(rows[-1], flush=True)
        if step == args.steps:
            break
        block.adjoint = ndode.BacksolveAdjoint(options={"norm": "seminorm"})
        opt.zero_grad()
        lossf(model(x), y).backward()
        opt.step()
    out = Path(args.out or f"results/bench/adjoint_norm_tol{args.tol:g}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out)
    semi = statistics.mean(r["nfe_backward_seminorm"] for r in rows)
    full = statistics.mean(r["nfe_backward_full"] for r in rows)
    fwd = statistics.mean(r["nfe_forward"] for r in rows)
    print("\n| norm | mean NFE-F | mean NFE-B | NFE-B vs full |\n| --- | --- | --- | --- |")
    print(f"| full | {fwd:.1f} | {full:.1f} | 1.00 |")
    print(f"| seminorm | {fwd:.1f} | {semi:.1f} | {semi / full:.2f} |")
    print(f"\nlargest relative difference of the parameter gradients: {max(r['grad_rel_diff'] for r in rows):.2e}")


if __name__ == "__main__":
    main()

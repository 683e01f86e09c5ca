"""Benchmark 11 — data-parallel training throughput: 1 process vs 2 gloo processes on the same global batch.

One training step of the MNIST ODE-Net (dopri5, backsolve adjoint, tol 1e-3)
and of the ResNet (6 residual blocks), the models of ``ndode.models.mnist``, on
one global batch of random images (the solver's work depends on the weights
and the input statistics, not on the digits), measured two ways side by side:

- **1 process**, one thread, the whole batch;
- **2 processes** (gloo, one thread each; ``torch.multiprocessing`` with the
  harness's own ``ddp.init``), each its half of the batch, the model wrapped in
  ``DistributedDataParallel`` and the step inside
  ``ddp.synced_error_norms``, exactly as ``ndode.harness`` runs a training
  unit under ``torchrun``. A step's time runs from a barrier before it to a
  barrier after it: the slowest rank's.

A step is zero grad, forward, cross entropy, backward, an SGD step with
learning rate 0 (the update is computed, the weights stay put, so every
repetition does the same work and NFE are exact). Throughput is the global
batch over the median step time; on 2 dedicated cores the ceiling for 2
processes is 2× one single-thread process. NFE are every rank's own (the same
on every rank and as one process's: the shared error norm).

What the machine allows at the time is measured alongside: ``matmul`` splits
a fixed amount of work with no communication at all (128x128 matrix products,
8 per image), so its ratio is the speedup two processes can get from the
cores as they are then. The load average is recorded with each row: on a
shared machine the processes compete with other jobs for the cores, and the
models' ratios are to be read against ``matmul``'s rather than against 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import socket
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from ndode.models.mnist import build_mnist_model
from ndode.models.odeblock import ode_blocks

from .timing import machine_info

NAME = "ddp_scaling"
SIZES = {
    "full": dict(batch=128, dim=64, reps=5, warmup=1),
    "quick": dict(batch=32, dim=64, reps=2, warmup=1),
    "tiny": dict(batch=4, dim=8, reps=1, warmup=0),
}
MODELS = ("odenet", "resnet", "matmul")  # matmul: the calibration (no model, no communication)
MATMULS_PER_IMAGE = 8
WORLD = 2
CEILING = float(WORLD)
TIMEOUT_S = 900


def _batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


class _Trainer:
    """One model, its optimizer and its (share of the) batch; ``step()`` runs one training step."""

    def __init__(self, name: str, dim: int, x, y, denv=None):
        from ndode.harness import ddp

        self.denv, self.blocks, self.sync = denv, [], contextlib.nullcontext
        if name == "matmul":
            self.a, self.n = torch.randn(128, 128, generator=torch.Generator().manual_seed(0)), len(x)
            self._step = self._matmuls
            return
        torch.manual_seed(0)
        self.model = build_mnist_model(name, dim=dim)  # the ODE-Net's defaults: dopri5, tol 1e-3, backsolve adjoint
        self.net = self.model
        if denv is not None:
            self.net = torch.nn.parallel.DistributedDataParallel(self.model)
            self.sync = lambda: ddp.synced_error_norms(denv, self.model)
        self.x, self.y = x, y
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.0, momentum=0.9)
        self.blocks = list(ode_blocks(self.model))

    def _matmuls(self) -> None:
        for _ in range(MATMULS_PER_IMAGE * self.n):
            self.a @ self.a

    def _step(self) -> None:
        loss = torch.nn.functional.cross_entropy(self.net(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def step(self) -> float:
        """Seconds for one step (under DDP: from a barrier before to a barrier after, the slowest rank's)."""
        if self.denv is None:
            t0 = time.perf_counter()
            self._step()
            return time.perf_counter() - t0
        import torch.distributed as dist

        dist.barrier()
        t0 = time.perf_counter()
        with self.sync():
            self._step()
        dist.barrier()
        return time.perf_counter() - t0

    def nfe(self):
        b = self.blocks
        return (b[0].nfe_forward, b[0].nfe_backward) if b else (None, None)


def _worker(rank: int, port: int, sizes: dict, commands, results) -> None:
    """One rank: builds every model once, then runs ``(model, steps)`` commands until it gets None."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from ndode.harness import ddp

    try:
        denv = ddp.env()
        ddp.init(denv, torch.device("cpu"))
        x, y = _batch(sizes["batch"])
        n = sizes["batch"] // WORLD
        trainers = {m: _Trainer(m, sizes["dim"], x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n], denv)
                    for m in MODELS}
        results.put((rank, "ready", None))
        while (cmd := commands.get()) is not None:
            t = trainers[cmd].step()
            results.put((rank, cmd, (t, trainers[cmd].nfe())))
        ddp.shutdown(denv)
    except BaseException as e:  # noqa: BLE001 - the parent reports it
        results.put((rank, "error", repr(e)))


class _Ranks:
    """The two worker processes, commanded step by step from this process."""

    def __init__(self, sizes: dict):
        import torch.multiprocessing as mp

        with socket.socket() as s:  # a free port for the rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(WORLD)]
        self.procs = [ctx.Process(target=_worker, args=(r, port, sizes, self.commands[r], self.results), daemon=True)
                      for r in range(WORLD)]
        for p in self.procs:
            p.start()
        self._collect("ready")

    def _collect(self, what: str) -> dict:
        out = {}
        while len(out) < WORLD:
            try:
                rank, kind, value = self.results.get(timeout=TIMEOUT_S)
            except queue.Empty:
                raise RuntimeError(f"no answer from the {WORLD} benchmark processes in {TIMEOUT_S} s") from None
            if kind == "error":
                raise RuntimeError(f"benchmark process {rank} failed: {value}")
            out[rank] = value
        return out

    def step(self, model: str) -> tuple[float, list]:
        for q in self.commands:
            q.put(model)
        got = self._collect(model)
        return got[0][0], [got[r][1] for r in range(WORLD)]

    def close(self) -> None:
        for q in self.commands:
            q.put(None)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def run(sizes: dict) -> pd.DataFrame:
    load_before = machine_info()["loadavg_1m"]
    x, y = _batch(sizes["batch"])
    one = {m: _Trainer(m, sizes["dim"], x, y) for m in MODELS}
    ranks = _Ranks(sizes)
    times = {(m, p): [] for m in MODELS for p in (1, WORLD)}
    nfe = {}
    try:
        for rep in range(sizes["warmup"] + sizes["reps"]):
            for m in MODELS:
                order = (1, WORLD) if rep % 2 == 0 else (WORLD, 1)  # rotate: drifts in load fall on both
                for p in order:
                    if p == 1:
                        t, counts = one[m].step(), [one[m].nfe()]
                    else:
                        t, counts = ranks.step(m)
                    if rep >= sizes["warmup"]:
                        times[m, p].append(t)
                    nfe[m, p] = counts
    finally:
        ranks.close()
    load_after = machine_info()["loadavg_1m"]
    rows = []
    for m in MODELS:
        base = statistics.median(times[m, 1])
        for p in (1, WORLD):
            step_s = statistics.median(times[m, p])
            per_rank = nfe[m, p]
            rows.append(dict(model=m, processes=p, batch=sizes["batch"], batch_per_process=sizes["batch"] // p,
                             dim=sizes["dim"], step_s=step_s, images_per_s=sizes["batch"] / step_s,
                             speedup=base / step_s, ceiling=float(p), reps=len(times[m, p]),
                             nfe_forward=per_rank[0][0], nfe_backward=per_rank[0][1],
                             nfe_same_on_every_rank=all(c == per_rank[0] for c in per_rank),
                             cores=os.cpu_count(), load_before=load_before, load_after=load_after))
    return pd.DataFrame(rows)


def verdicts(df: pd.DataFrame) -> list[tuple[str, bool]]:
    return []  # a measurement against the 2x ceiling, not a goal: it depends on what else the cores run


def _load_text(df: pd.DataFrame) -> str:
    r = df.iloc[0]
    busy = max(r.load_before, r.load_after) > 0.5 * r.cores
    shared = " (shared with other jobs: read the ratios against the calibration's, not against the ceiling)"
    return f"load average {r.load_before:g} before, {r.load_after:g} after on {r.cores} cores" + (shared if busy else "")


def _speedup(df: pd.DataFrame, model: str) -> float:
    return float(df[(df.model == model) & (df.processes == WORLD)].speedup.iloc[0])


def summary(df: pd.DataFrame) -> str:
    parts = [f"{m} {_speedup(df, m):.2f}x ({df[(df.model == m) & (df.processes == WORLD)].images_per_s.iloc[0]:.0f} "
             f"vs {df[(df.model == m) & (df.processes == 1)].images_per_s.iloc[0]:.0f} images/s)"
             for m in MODELS if m != "matmul"]
    return (f"ddp scaling, {WORLD} gloo processes vs 1, global batch {df.batch.iloc[0]} (ceiling {CEILING:g}x): "
            + "; ".join(parts) + f"; no-communication calibration {_speedup(df, 'matmul'):.2f}x | {_load_text(df)}")


def markdown(df: pd.DataFrame) -> str:
    lines = [f"Measured with {_load_text(df)}.", "",
             "| model | processes | images per process | step (s) | images/s | ÷ 1 process | ceiling | "
             "NFE-F/NFE-B (every rank) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in df.itertuples():
        nfe = "—" if pd.isna(r.nfe_forward) else (f"{int(r.nfe_forward)}/{int(r.nfe_backward)}"
                                                  + ("" if r.nfe_same_on_every_rank else " (ranks differ)"))
        model = "matmul (calibration)" if r.model == "matmul" else r.model
        lines.append(f"| {model} | {r.processes} | {r.batch_per_process} | {r.step_s:.3f} | {r.images_per_s:.1f} | "
                     f"{r.speedup:.2f}x | {r.ceiling:g}x | {nfe} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ddp_scaling", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=tuple(SIZES), default="full")
    ap.add_argument("--csv", type=Path, default=None, help="write the rows here (e.g. results/bench/ddp_scaling.csv)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    df = run(SIZES[a.profile])
    print(summary(df))
    print(markdown(df))
    if a.csv is not None:
        a.csv.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(a.csv, index=False)


if __name__ == "__main__":
    main()

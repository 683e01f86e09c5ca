"""What keeping data-parallel ODE-Net ranks in step costs: an all-reduced error norm vs each rank on its own.

    python -m benchmarks.ddp_sync [--steps 10] [--world 2] [--batch 32]

Starts ``--world`` CPU processes (gloo) that train the MNIST ODE-Net (dopri5,
adjoint, rtol = atol = 1e-3) data-parallel on a global batch of random images,
two copies from the same weights side by side (a step of each in turn, so drifts in the machine's load fall on
both):

- ``synced``: every adaptive solve's error norm is the RMS over all ranks'
  data (``ndode.harness.ddp.norm_reduce`` as the block's ``norm_reduce``, what
  the harness does during a training step): the
  ranks take the same steps as one process on the whole batch, at the price of
  one small all-reduce per step attempt (forward and adjoint solves);
- ``own``: each rank's solver decides on its shard alone. DDP still works (the
  adjoint returns the parameter gradients only at the end of its backward
  solve, so no collective sits inside a solve), but ranks take different
  numbers of steps, the fastest waits for the slowest at DDP's all-reduce, and
  the trained model is no longer the one a single process would train.

Prints, per mode, the median wall time of a training step (the slowest
rank's), the NFE per rank (forward, backward), the all-reduces the norms made
per step, and the time of one such all-reduce alone. Writes nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ndode
from ndode.harness import ddp
from ndode.models.mnist import build_mnist_model
from ndode.models.odeblock import ode_blocks


def _worker(rank: int, world: int, steps: int, batch: int, init_file: str, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    denv = ddp.DistEnv(rank, world)
    denv.norm_group = dist.new_group(backend="gloo")
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(steps + 1, batch, 1, 28, 28, generator=g)
    ys = torch.randint(0, 10, (steps + 1, batch), generator=g)
    n = batch // world
    reduce, calls = ddp.norm_reduce(denv), [0]

    def counted(v):
        calls[0] += 1
        return reduce(v)

    runs = {}
    for mode in ("synced", "own"):  # the same initial weights; the two train side by side, a step of each in turn
        torch.manual_seed(0)
        model = build_mnist_model("odenet", dim=64, rtol=1e-3, atol=1e-3, method="dopri5", adjoint=ndode.BacksolveAdjoint())
        block = next(ode_blocks(model))
        block.norm_reduce = counted if mode == "synced" else None
        runs[mode] = dict(model=model, net=torch.nn.parallel.DistributedDataParallel(model),
                          opt=torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9),
                          block=block, times=[], nfe=[], reduces=[])

    for s in range(steps + 1):  # step 0 warms up
        x, y = xs[s, rank * n:(rank + 1) * n], ys[s, rank * n:(rank + 1) * n]
        for mode in (("synced", "own") if s % 2 else ("own", "synced")):  # alternate: drifts in load cancel
            r = runs[mode]
            calls[0] = 0
            dist.barrier()
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(r["net"](x), y)
            r["opt"].zero_grad(set_to_none=True)
            loss.backward()
            r["opt"].step()
            dist.barrier()  # the step ends for everyone when the slowest rank is done
            if s:
                r["times"].append(time.perf_counter() - t0)
                r["nfe"].append((r["block"].nfe_forward, r["block"].nfe_backward))
                r["reduces"].append(calls[0])
    out = {mode: dict(time=statistics.median(r["times"]), mean=statistics.mean(r["times"]), nfe=r["nfe"],
                      reduces=statistics.median(r["reduces"]),
                      # plain numbers: a tensor through the queue is a handle into this process, which exits
                      params=torch.cat([p.detach().reshape(-1) for p in r["model"].parameters()]).tolist())
           for mode, r in runs.items()}
    # one norm all-reduce alone
    t = torch.ones(1, dtype=torch.float64)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(200):
        dist.all_reduce(t, group=denv.norm_group)
    out["allreduce_s"] = (time.perf_counter() - t0) / 200
    queue.put((rank, out))
    dist.destroy_process_group()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as d:
        init = os.path.join(d, "init")
        procs = [ctx.Process(target=_worker, args=(r, a.world, a.steps, a.batch, init, q)) for r in range(a.world)]
        for p in procs:
            p.start()
        res = dict(q.get() for _ in procs)
        for p in procs:
            p.join()
    r0 = res[0]
    print(f"MNIST ODE-Net (dopri5, adjoint, tol 1e-3), global batch {a.batch} over {a.world} CPU processes (gloo), "
          f"median of {a.steps} steps")
    print(f"one norm all-reduce (gloo, 1 float64): {1e6 * r0['allreduce_s']:.0f} us")
    for mode in ("synced", "own"):
        nfe = " / ".join(f"rank {r}: " + ",".join(f"{f}+{b}" for f, b in res[r][mode]["nfe"]) for r in sorted(res))
        print(f"{mode:>6}: step {r0[mode]['time']:.3f} s (mean {r0[mode]['mean']:.3f} s) | norm all-reduces per step {r0[mode]['reduces']:.0f} "
              f"| NFE forward+backward per step: {nfe}")
    diff = max((torch.tensor(res[r]["own"]["params"]) - torch.tensor(res[r]["synced"]["params"])).abs().max().item()
               for r in res)
    print(f"largest parameter difference own vs synced after {a.steps + 1} steps: {diff:.2e}")


if __name__ == "__main__":
    main()

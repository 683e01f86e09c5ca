"""Adaptive solves on ranks with different data (tests/test_ddp.py): the worker and the one-process reference.

Rank ``r`` of a gloo job gets the ``r``-th shard of one global batch; the
shards differ in scale (``SCALES``), so on its own each rank's dopri5 takes
other steps (``synced=False``, the control). With the harness's all-reduced
error norm (``synced=True``) every rank must take the steps one process takes
on the whole batch, on every path: a tensor-state ODE-Net's forward solve
with the backsolve adjoint, the checkpointed adjoint or direct
backpropagation, and a tuple state's forward and backsolve solves.

In float64: a matrix product's rounding depends on the batch size, and in
float32 that noise alone can move an error estimate of a few ulps (a first
step far inside the tolerance) by percents, so a one-process run's steps would
differ from the ranks' for reasons that have nothing to do with the norm.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import ndode
from ndode.harness import ddp
from ndode.harness.loop import RunContext
from ndode.models.odeblock import ODEBlock

SCALES = (0.1, 3.0)  # shard r is standard normal times SCALES[r]: small states take fewer steps
SHARD = 8
TOL = 1e-4
ADJOINTS = ("backsolve", "checkpoint", "none")


class Field(nn.Module):
    """``dh/dt = sin(W h + b) * h``: how hard it is to integrate depends on the size of ``h``."""

    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, t, h):
        return torch.sin(self.lin(h)) * h


class TupleField(Field):
    def forward(self, t, y):
        h, z = y
        return torch.sin(self.lin(h)) * h, -z * h.mean(1, keepdim=True)


def batch(ranks) -> torch.Tensor:
    """The shards of ``ranks``, concatenated (all of them: the global batch)."""
    g = torch.Generator().manual_seed(0)
    shards = [torch.randn(SHARD, 4, generator=g, dtype=torch.float64) * s for s in SCALES]
    return torch.cat([shards[r] for r in ranks])


def odenet(adjoint: str) -> nn.Module:
    """A tensor-state ODE-Net: a linear stem, an ``ODEBlock``, a linear head (the same weights on every call);
    ``adjoint``: a name of :data:`ADJOINTS`."""
    torch.manual_seed(0)
    method = None if adjoint == "none" else ndode.ADJOINTS[adjoint]()
    return nn.Sequential(nn.Linear(4, 8), ODEBlock(Field(8), rtol=TOL, atol=TOL, adjoint=method),
                         nn.Linear(8, 3)).double()


def odenet_step(model: nn.Module, net: nn.Module, x: torch.Tensor) -> dict:
    """Forward and backward of the mean loss over ``x`` through ``net`` (``model`` or its DDP wrapper)."""
    model.zero_grad(set_to_none=True)
    net(x).square().mean().backward()
    block = model[1]
    return {"nfe": (block.nfe_forward, block.nfe_backward),
            "grad": torch.cat([p.grad.reshape(-1) for p in model.parameters()])}


def tuple_solve(x: torch.Tensor, norm_reduce=None) -> dict:
    """A tuple state's forward and backsolve-adjoint solves (no ODEBlock: ``norm_reduce`` passed to ``solve``)."""
    torch.manual_seed(0)
    func = TupleField(4).double()
    y0 = (x, torch.ones(len(x), 2, dtype=x.dtype))
    sol = ndode.solve(func, y0, [0.0, 1.0], rtol=TOL, atol=TOL, adjoint=ndode.BacksolveAdjoint(),
                      norm_reduce=norm_reduce)
    sum(y[-1].square().sum() for y in sol.ys).backward()
    return {"nfe": (sol.stats.nfe, sol.stats.nfe_backward)}


def worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    out = {}
    try:
        denv = ddp.env()
        ddp.init(denv, torch.device("cpu"))
        try:  # a one-process DistEnv inside this job: refused, not believed
            RunContext(Path("."), torch.device("cpu"), 0, ddp.DistEnv(0, 1))
            out["lone"] = None
        except ValueError as e:
            out["lone"] = str(e)
        x = batch([rank])
        for adjoint in ADJOINTS:
            for synced in (True, False):
                model = odenet(adjoint)
                net = torch.nn.parallel.DistributedDataParallel(model)  # gradients averaged over the ranks
                with ddp.synced_error_norms(denv, model) if synced else contextlib.nullcontext():
                    res = odenet_step(model, net, x)
                # plain numbers through the queue (a tensor would be a handle into this process's memory)
                out[adjoint, synced] = {"nfe": res["nfe"], "grad": res["grad"].tolist(),
                                        "after": model[1].norm_reduce}  # the harness's context cleared it
        for synced in (True, False):
            out["tuple", synced] = tuple_solve(x, ddp.norm_reduce(denv) if synced else None)
    except BaseException:  # noqa: BLE001 - the test prints it
        out["error"] = traceback.format_exc()
    finally:
        queue.put((rank, out))
        if dist.is_initialized():
            dist.destroy_process_group()

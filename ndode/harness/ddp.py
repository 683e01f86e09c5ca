"""Data-parallel runs under ``torchrun``: the process group, the DDP wrapper, agreement between ranks.

The harness is the only user: it starts one process group per run (gloo on
CPU, nccl on CUDA), wraps the task's model in
:class:`~torch.nn.parallel.DistributedDataParallel`, averages each unit's
training metrics over the ranks, agrees on stopping, and makes every rank's
adaptive solver take the same steps (:func:`synced_error_norms`). The
process's rank and world size live in one :class:`DistEnv`, built once by
:func:`env` and handed to the task in ``RunContext.dist``; every function here
takes it (no default meaning "one process").
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

from ..models.odeblock import ode_blocks

__all__ = ["DistEnv", "env", "device_for", "init", "shutdown", "broadcast", "agree", "any_max", "any_signal", "all_sum",
           "mean_metrics", "norm_reduce", "synced_error_norms", "check_world", "world_problem", "check_group", "shard",
           "wrap"]


class DistEnv:
    """The process's place in a ``torchrun`` job: ``rank`` of ``world`` processes (:func:`env` reads them)."""

    def __init__(self, rank: int, world: int, local_rank: int = 0):
        for name, v in (("rank", rank), ("world", world), ("local_rank", local_rank)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"DistEnv {name} must be an integer, got {v!r}")
        if world < 1 or not 0 <= rank < world or local_rank < 0:
            raise ValueError(f"DistEnv(rank={rank}, world={world}, local_rank={local_rank}): need world >= 1, "
                             f"0 <= rank < world and local_rank >= 0")
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.norm_group = None  # a second group for the solver's error norms (never interleaved with DDP's buckets)

    @property
    def active(self) -> bool:
        return self.world > 1

    def __repr__(self) -> str:
        return f"DistEnv(rank={self.rank}, world={self.world}, local_rank={self.local_rank})"


def env() -> DistEnv:
    """From ``torchrun``'s variables; in a submitit SLURM job with several tasks (``hydra/launcher=slurm``
    with ``gpus_per_node`` > 1: one task per GPU) submitit's helper sets them from SLURM's first."""
    if ("RANK" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
            and int(os.environ.get("SLURM_NTASKS", "1")) > 1):
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)  # MASTER_ADDR/PORT, RANK, WORLD_SIZE...
    return DistEnv(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")))


def device_for(spec_device: torch.device, denv: DistEnv) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:<LOCAL_RANK>`` (``cuda:0`` where each process sees one GPU)."""
    if denv.active and spec_device.type == "cuda" and spec_device.index is None:
        return torch.device("cuda", denv.local_rank % max(torch.cuda.device_count(), 1))
    return spec_device


def init(denv: DistEnv, device: torch.device) -> None:
    """Join the job's process group: gloo on CPU, nccl on CUDA (returns once every rank has joined)."""
    if not denv.active or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kw = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kw)
    denv.norm_group = dist.new_group(backend=backend)


def shutdown(denv: DistEnv) -> None:
    """Leave the process group, every rank together.

    Rank 0 still writes the record (summary, figures) when the others are done; a rank that tore its group down
    and exited while a peer was still connected was once seen to abort at exit ("terminate called without an
    active exception", gloo, in tests/test_ddp.py). So the ranks first meet at a barrier, bounded in time: a
    rank whose peer failed or is gone does not wait for it longer than that.
    """
    if denv.active and dist.is_initialized():
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=30))
            else:
                dist.barrier()
        except Exception:  # noqa: BLE001 - a peer that failed or is gone: nothing left to wait for
            pass
        finally:
            dist.destroy_process_group()


def broadcast(denv: DistEnv, obj):
    """Rank 0's ``obj`` on every rank."""
    if not denv.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(denv: DistEnv, fn, errors: tuple[type[BaseException], ...] = (), default: type[Exception] = RuntimeError):
    """``fn()`` on rank 0 alone, its result (or its error) on every rank.

    An error of one of the classes in ``errors`` is raised on the other ranks as
    that class with rank 0's message; any other as ``default``, naming rank 0's class.
    """
    if not denv.active:
        return fn()
    if denv.rank == 0:
        try:
            out = fn()
        except BaseException as e:
            broadcast(denv, ("error", type(e).__name__, str(e)))
            raise
        return broadcast(denv, ("ok", out))[1]
    got = broadcast(denv, None)
    if got[0] == "ok":
        return got[1]
    cls = {c.__name__: c for c in errors}.get(got[1])
    raise cls(got[2]) if cls is not None else default(f"{got[2]} (rank 0: {got[1]})")


def _float_device(device: torch.device) -> torch.device:
    return device if device.type == "cuda" else torch.device("cpu")


def any_max(denv: DistEnv, value: int, device: torch.device) -> int:
    """The largest ``value`` over the ranks (a stop signal seen by any rank stops them all at the same unit)."""
    if not denv.active:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_float_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_signal(denv: DistEnv, signum: int | None, device: torch.device) -> int | None:
    """A stop signal seen by any rank (the largest number), the same on every rank; None: none."""
    if not denv.active:
        return signum
    return any_max(denv, signum or 0, device) or None


def all_sum(denv: DistEnv, values, device: torch.device) -> list[float]:
    """Elementwise sums over the ranks of a list of numbers (float64)."""
    if not denv.active:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_float_device(device))
    dist.all_reduce(t)
    return t.tolist()


def mean_metrics(denv: DistEnv, metrics: dict, device: torch.device) -> dict:
    """A unit's metrics averaged over the ranks (equal shards: the mean of shard means is the global batch's).

    Keys must match across ranks; a None stays None where it is None on every rank; a NaN anywhere is a NaN
    everywhere (so the non-finite guard stops every rank at the same unit).
    """
    if not denv.active:
        return metrics
    keys = sorted(metrics)
    vals = []
    for k in keys:
        v = metrics[k]
        if isinstance(v, torch.Tensor):
            v = v.item()
        vals += [0.0, 0.0] if v is None else [float(v), 1.0]
    sums = all_sum(denv, vals, device)
    out = {}
    for i, k in enumerate(keys):
        s, n = sums[2 * i], sums[2 * i + 1]
        out[k] = None if n == 0 else s / n
    return out


def norm_reduce(denv: DistEnv):
    """The solver's ``norm_reduce`` for this job (None in a one-process run): error norms over all ranks' data.

    Each rank's norm ``n_r`` is the RMS over its shard; with equal shards the
    RMS over the global batch is ``sqrt(mean_r n_r**2)``: the same number on
    every rank, and the one a single process would compute on the whole batch,
    so every rank accepts, rejects and sizes each step alike (forward and
    adjoint solves) and the run takes the single-process run's steps. It costs
    one small all-reduce per norm (docs/harness.md, "Scaling out"), on a group
    of its own (``init`` makes it) so it never interleaves with DDP's.
    """
    if not denv.active:
        return None
    if denv.norm_group is None:
        raise RuntimeError(f"{denv}: the process group is not joined (ddp.init); the error norms cannot be shared")
    group, world = denv.norm_group, denv.world

    def reduce(n: torch.Tensor) -> torch.Tensor:
        sq = (n.detach().to(torch.float64) ** 2).reshape(-1)
        dist.all_reduce(sq, group=group)
        return (sq / world).sqrt().to(n.dtype).reshape(n.shape)

    return reduce


@contextlib.contextmanager
def synced_error_norms(denv: DistEnv, model: torch.nn.Module):
    """Within the block, every ``ODEBlock`` of ``model`` solves with the error norms over all ranks' data.

    The harness wraps each training unit in it; outside (evaluation, rank 0's
    ``analyze``) each rank solves on its own, so no rank waits on another that
    is not solving. A task of a data-parallel run that calls ``ndode.solve``
    itself passes ``norm_reduce=ddp.norm_reduce(ctx.dist)`` inside its training step.
    """
    reduce = norm_reduce(denv)
    blocks = list(ode_blocks(model)) if reduce is not None else []
    before = [b.norm_reduce for b in blocks]
    for b in blocks:
        b.norm_reduce = reduce
    try:
        yield
    finally:
        for b, r in zip(blocks, before):
            b.norm_reduce = r


def check_world(world: int, batch_size: int | None, option: str = "budget.batch_size") -> str | None:
    """Why ``world`` processes cannot split the configured batch (None: they can)."""
    if world > 1 and batch_size is not None and batch_size % world:
        ok = [n for n in range(1, batch_size + 1) if batch_size % n == 0]
        return (f"{option}={batch_size} is the global batch and must split evenly over the {world} processes "
                f"(WORLD_SIZE={world}); use a process count that divides it ({', '.join(map(str, ok[:12]))}"
                f"{', ...' if len(ok) > 12 else ''}) or a batch size that is a multiple of {world}")
    return None


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel: its gradients are all-reduced by DDP's hooks (direct backprop and the
    adjoint's alike)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def world_problem(denv: DistEnv, supports_ddp: bool, experiment: str, batch_size: int | None) -> str | None:
    """Why this run cannot start under ``torchrun`` with more than one process (None: it can): the task must
    support it and the batch must split."""
    if not denv.active:
        return None
    if not supports_ddp:
        return (f"experiment {experiment} runs single-process (its task does not support data-parallel training) "
                f"but was started with WORLD_SIZE={denv.world}; run it with python, not torchrun (a sweep of such "
                "runs: hydra/launcher=slurm or joblib)")
    return check_world(denv.world, batch_size)


def check_group(denv: DistEnv) -> None:
    """Refuse a ``DistEnv`` that disagrees with the joined process group (e.g. a one-process one in a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        if (denv.rank, denv.world) != (rank, world):
            raise ValueError(f"{denv} disagrees with the process group this process joined (rank {rank} of {world}); "
                             "use the DistEnv the harness built (RunContext.dist)")


def shard(indices, denv: DistEnv):
    """This rank's contiguous share of one global batch's indices (rank r takes the r-th of ``world`` equal parts)."""
    if not denv.active:
        return indices
    n = len(indices) // denv.world
    return indices[denv.rank * n:(denv.rank + 1) * n]

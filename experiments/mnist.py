"""MNIST: ResNet vs RK-Net vs ODE-Net, and the 1-layer MLP (the paper's §3, Table 1 and Figure 3).

The entry point; the experiment itself is :mod:`ndode.experiments.mnist`.

    python experiments/mnist.py model=odenet                       # cpu budget (the default here)
    python experiments/mnist.py model=rknet solver.method=rk4 solver.step_size=0.25
    python experiments/mnist.py -m model=mlp,resnet,rknet,odenet budget=paper seed=0,1,2
    make reproduce-mnist BUDGET=cpu                                # all four, then the table and figure
    torchrun --standalone --nproc_per_node=4 experiments/mnist.py model=odenet budget=paper   # one run, DDP
"""

import hydra

from ndode.experiments.mnist import MNISTTask
from ndode.harness import run_experiment


@hydra.main(version_base="1.3", config_path="../configs", config_name="mnist")
def main(cfg) -> dict:
    return run_experiment(cfg, MNISTTask)


if __name__ == "__main__":
    main()

"""Continuous normalizing flows vs planar flows (the paper's §4, Figures 4 and 5) and FFJORD's toy densities.

The entry point; the experiment itself is :mod:`ndode.experiments.cnf`.

    python experiments/cnf.py data=U1 flow=cnf size=32              # budget=auto: paper with CUDA, else cpu
    python experiments/cnf.py data=moons flow=planar size=64 budget=smoke
    python experiments/cnf.py -m data=U1,U3c,U4c flow=planar,cnf size=2,8,32 hydra/launcher=joblib
    make reproduce-cnf BUDGET=cpu JOBS=2
"""

import hydra

from ndode.experiments.cnf import CNFTask
from ndode.harness import run_experiment


@hydra.main(version_base="1.3", config_path="../configs", config_name="cnf")
def main(cfg) -> dict:
    return run_experiment(cfg, CNFTask)


if __name__ == "__main__":
    main()

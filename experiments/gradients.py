"""The gradient study (docs/gradients.md): each gradient method's accuracy, cost and memory on the paper's trained
models.

The entry point; the experiment itself is :mod:`ndode.experiments.gradients`.

    python experiments/gradients.py source=cnf tol=1e-5                 # budget=auto: paper with CUDA, else cpu
    python experiments/gradients.py -m source=mnist,cnf,latent_ode,latent_poisson tol=1e-3,1e-5,1e-7
    make reproduce-gradients BUDGET=cpu                                 # sources, study, training runs, table
"""

import hydra

from ndode.experiments.gradients import GradientsTask
from ndode.harness import run_experiment


@hydra.main(version_base="1.3", config_path="../configs", config_name="gradients")
def main(cfg) -> dict:
    return run_experiment(cfg, GradientsTask)


if __name__ == "__main__":
    main()

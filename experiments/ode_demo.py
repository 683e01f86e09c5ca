"""Demo experiment: learn the dynamics of a 2-D spiral ODE from noisy samples.

The entry point; the experiment itself is :mod:`ndode.experiments.ode_demo`.

    python experiments/ode_demo.py                                   # cpu budget (make demo)
    python experiments/ode_demo.py solver.method=rk4 budget=smoke seed=3
    python experiments/ode_demo.py -m seed=0,1,2 hydra/launcher=joblib
"""

import hydra

from ndode.experiments.ode_demo import ODEDemoTask
from ndode.harness import run_experiment


@hydra.main(version_base="1.3", config_path="../configs", config_name="ode_demo")
def main(cfg) -> dict:
    return run_experiment(cfg, ODEDemoTask)


if __name__ == "__main__":
    main()

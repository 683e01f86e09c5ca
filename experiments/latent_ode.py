"""Latent ODE vs RNNs on irregularly sampled spirals (Table 2, Figures 8 and 9), and with ``--config-name
latent_poisson`` the latent ODE on spirals observed at Poisson events (Figure 7).

The entry point of both; the experiments themselves are :mod:`ndode.experiments.latent_ode` and
:mod:`ndode.experiments.latent_poisson`. The config's schema picks the task, not ``experiment`` (a label: the gradient
study's training runs, ``experiment=gradients``, are Table 2's latent ODE under another name).

    python experiments/latent_ode.py model=latent_ode data.n_obs=30          # budget=auto: paper with CUDA, else cpu
    python experiments/latent_ode.py -m model=latent_ode,rnn,rnn_dt data.n_obs=30,50,100 seed=0,1
    python experiments/latent_ode.py --config-name latent_poisson                       # the Poisson term on
    python experiments/latent_ode.py --config-name latent_poisson model.poisson=false   # and off
"""

import hydra
from omegaconf import OmegaConf

from ndode.experiments.latent_ode import LatentODEConfig, LatentODETask
from ndode.experiments.latent_poisson import LatentPoissonConfig, PoissonTask
from ndode.harness import run_experiment

TASKS = {LatentODEConfig: LatentODETask, LatentPoissonConfig: PoissonTask}


@hydra.main(version_base="1.3", config_path="../configs", config_name="latent_ode")
def main(cfg) -> dict:
    return run_experiment(cfg, TASKS[OmegaConf.get_type(cfg)])


if __name__ == "__main__":
    main()

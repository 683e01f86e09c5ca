"""The paper's experiments, one module each: the config schema (registered with Hydra on import) and the task the
harness runs. ``experiments/<name>.py`` are their command-line entry points.

``ode_demo`` (the spiral demo), ``mnist`` (Table 1, Figure 3), ``cnf`` (Figures 4, 5, FFJORD's toys), ``latent_ode``
(Table 2, Figures 8, 9) and ``latent_poisson`` (Figure 7); ``_latent`` holds what the last two share. Beyond the
paper, ``gradients`` (docs/gradients.md) measures each gradient method on the trained models of the others: it
rebuilds them with their own modules' tasks, read from their run records.
"""

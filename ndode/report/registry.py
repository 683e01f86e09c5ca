"""What the W&B dashboard shows for each experiment: one declarative entry per experiment.

An :class:`Experiment` lists the files ``make tables`` / ``make figures`` write for it
(paths relative to ``results/``), the summary metrics its runs tables show, and its
dashboard sections: one per paper table or figure, each a few :class:`View` s of
W&B keys. ``scripts/wandb_dashboard.py`` and the per-experiment ``summary`` run
(written by ``make tables``) read only this module, so a new experiment gets its
dashboard sections by adding one entry to :data:`REGISTRY` (see docs/dashboard.md).

Where the keys come from (W&B names):

* a training run logs its metrics as ``train/<metric>``, ``eval/<metric>`` and
  ``analysis/<metric>`` against ``step``, and at its end its figures
  (``<run dir>/figures/<stem>.png``) as images ``figures/<stem>`` and its arrays
  (``<run dir>/arrays/<stem>.csv``; ``<stem>.npz``: one table per array) as tables
  ``arrays/<stem>`` / ``arrays/<stem>/<array>`` (:mod:`ndode.wandb_mirror`);
* the experiment's ``summary`` run holds each file of ``tables`` as the table
  ``tables/<stem>`` and each file of ``figures`` as the image ``figures/<stem>``
  (:func:`summary_key`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

__all__ = ["View", "Section", "Experiment", "REGISTRY", "register", "summary_key"]

ViewKind = Literal["table", "image", "line", "bar"]


@dataclass(frozen=True)
class View:
    """One panel: ``kind`` of the W&B ``keys``, drawn from the training runs or the summary run."""

    kind: ViewKind
    keys: tuple[str, ...]
    source: Literal["runs", "summary"] = "runs"
    title: str = ""

    def __post_init__(self):
        if self.kind not in ("table", "image", "line", "bar"):
            raise ValueError(f"View.kind={self.kind!r} is not one of ['table', 'image', 'line', 'bar']")
        if self.source not in ("runs", "summary"):
            raise ValueError(f"View.source={self.source!r} is not one of ['runs', 'summary']")
        if not self.keys or isinstance(self.keys, str):
            raise ValueError(f"View.keys={self.keys!r} must be a non-empty tuple of W&B keys")


@dataclass(frozen=True)
class Section:
    """A paper table or figure: a heading, a caption and its views (each section also gets a runs table)."""

    title: str
    views: tuple[View, ...]
    caption: str = ""


@dataclass(frozen=True)
class Experiment:
    name: str  # as in the run records' ``experiment`` and the W&B group
    title: str
    tables: tuple[str, ...] = ()  # results-relative CSV files: the summary run's tables
    figures: tuple[str, ...] = ()  # results-relative PNG files: the summary run's images
    metrics: tuple[str, ...] = ()  # summary metrics shown as columns of the runs tables
    sections: tuple[Section, ...] = field(default_factory=tuple)
    reproduce: str = ""  # the command that makes its runs (shown when there are none)

    def __post_init__(self):
        bad = [p for p in self.tables if not p.endswith(".csv")] + [p for p in self.figures if not p.endswith(".png")]
        if bad:
            raise ValueError(f"{self.name}: tables must be .csv and figures .png files; got {bad}")
        own = {summary_key(p) for p in self.tables + self.figures}
        for s in self.sections:
            for v in s.views:
                missing = [k for k in v.keys if v.source == "summary" and k not in own]
                if missing:
                    raise ValueError(f"{self.name}: section {s.title!r} reads {missing} from the summary run, which "
                                     f"holds only {sorted(own)} (its tables and figures)")


def summary_key(path: str) -> str:
    """The summary run's key of a results-relative file: ``tables/<stem>`` (a CSV) or ``figures/<stem>`` (a PNG)."""
    p = PurePosixPath(path)
    return f"{'figures' if p.suffix == '.png' else 'tables'}/{p.stem}"


REGISTRY: dict[str, Experiment] = {}


def register(exp: Experiment) -> Experiment:
    if exp.name in REGISTRY:
        raise ValueError(f"experiment {exp.name!r} is registered twice")
    REGISTRY[exp.name] = exp
    return exp


# Paper order: MNIST (Table 1, Figure 3), CNF (Figures 4-5), latent ODE (Table 2, Figures 8-9); the demo last.
register(Experiment(
    name="mnist",
    title="MNIST: ResNet vs RK-Net vs ODE-Net (paper Section 3, Table 1, Figure 3)",
    tables=("tables/mnist_table1.csv",),
    figures=("figures/mnist_fig3.png",),
    metrics=("test_error", "params", "saved_bytes", "step_time_s", "train_nfe_forward", "train_nfe_backward"),
    reproduce="make reproduce-mnist BUDGET=<budget>",
    sections=(
        Section("Table 1: test error, parameters, memory, time",
                (View("table", ("tables/mnist_table1",), "summary"),),
                "Measured beside the paper's values, mean ± std over seeds (results/tables/mnist_table1.csv)."),
        Section("Test error during training",
                (View("line", ("eval/test_error",), title="test error of the four models"),)),
        Section("NFE-F and NFE-B during training",
                (View("line", ("train/nfe_forward",), title="NFE-F"),
                 View("line", ("train/nfe_backward",), title="NFE-B"))),
        Section("Figure 3: NFE, time and numerical error against the tolerance",
                (View("image", ("figures/mnist_fig3",), "summary"),
                 View("table", ("arrays/fig3_sweep",), title="the ODE-Net's tolerance sweep"))),
    ),
))

register(Experiment(
    name="cnf",
    title="Planar flows vs CNFs (paper Section 4, Figures 4 and 5) and FFJORD toy densities",
    tables=("tables/cnf_fig4_loss.csv", "tables/cnf_fig5_nll.csv", "tables/cnf_toy_nll.csv"),
    figures=("figures/cnf_fig4.png", "figures/cnf_fig5.png", "figures/cnf_toy.png", "figures/cnf_fig4_curves.png",
             "figures/cnf_fig5_curves.png"),
    metrics=("kl", "kl_fwd", "mass_out", "nll_test", "nfe_forward", "nfe_backward", "wall_time_s"),
    reproduce="make reproduce-cnf BUDGET=<budget>",
    sections=(
        Section("Figure 4: density matching, the true KL(q||p) against K and M",
                (View("table", ("tables/cnf_fig4_loss",), "summary"),
                 View("image", ("figures/cnf_fig4",), "summary"),
                 View("image", ("figures/cnf_fig4_curves",), "summary"),
                 View("line", ("eval/kl_val",), title="validation KL during training")),
                "Mean ± std over seeds (results/tables/cnf_fig4_loss.csv); targets U1, U3c, U4c (U3, U4 confined)."),
        Section("Figure 5: maximum likelihood, noise to data",
                (View("table", ("tables/cnf_fig5_nll",), "summary"),
                 View("image", ("figures/cnf_fig5",), "summary"),
                 View("image", ("figures/cnf_fig5_curves",), "summary"),
                 View("line", ("eval/nll_val",), title="validation NLL during training")),
                "Test NLL in nats, mean ± std over seeds (results/tables/cnf_fig5_nll.csv)."),
        Section("FFJORD toy densities: test NLL, NFE-F and NFE-B",
                (View("table", ("tables/cnf_toy_nll",), "summary"),
                 View("image", ("figures/cnf_toy",), "summary"),
                 View("line", ("train/nfe_forward",), title="NFE-F"),
                 View("line", ("train/nfe_backward",), title="NFE-B"))),
    ),
))

register(Experiment(
    name="latent_ode",
    title="Latent ODE vs RNNs on irregularly sampled spirals (paper Section 5, Table 2, Figures 8 and 9)",
    tables=("tables/latent_table2.csv",),
    figures=("figures/latent_fig8.png", "figures/latent_fig9.png", "figures/latent_learning_curves.png"),
    metrics=("test_rmse_window_noisy", "test_rmse_window_clean", "test_rmse_extrap_clean", "val_rmse_window_noisy",
             "val_rmse_extrap_clean", "nfe_forward", "step_time_s", "wall_time_s"),
    reproduce="make reproduce-latent-ode BUDGET=<budget>",
    sections=(
        Section("Table 2: readings (a) over the observation window and (b) over the 100 points after it",
                (View("table", ("tables/latent_table2",), "summary"),
                 View("line", ("eval/val_rmse_window_noisy", "eval/val_rmse_extrap_clean"),
                      title="validation RMSE during training, readings (a) noisy and (b)"),
                 View("image", ("figures/latent_learning_curves",), "summary")),
                "Test RMSE per reading (a: the window's 100 timesteps, against noisy and noise-free points; b: the 100 "
                "points after it, noise-free), median and range over seeds, each model's variant chosen on validation "
                "(results/tables/latent_table2.csv)."),
        Section("Training: ELBO (latent ODE), next-step NLL (RNNs), NFE",
                (View("line", ("train/loss",), title="training loss"),
                 View("line", ("train/nfe_forward",), title="NFE-F of the latent solve"))),
        Section("Figures 8 and 9: reconstruction, extrapolation, latent space",
                (View("image", ("figures/latent_fig8",), "summary"),
                 View("image", ("figures/latent_fig9",), "summary"))),
    ),
))

register(Experiment(
    name="latent_poisson",
    title="Latent ODE with Poisson-process observation times, scored against the true rate (paper Section 5.1, "
          "Figure 7)",
    tables=("tables/latent_poisson.csv",),
    figures=("figures/latent_fig7.png",),
    metrics=("test_event_ll", "test_homogeneous_ll", "test_true_ll", "test_rate_rel_l2", "test_rmse_extrap_clean",
             "val_rmse_extrap_clean", "wall_time_s"),
    reproduce="make reproduce-poisson BUDGET=<budget>",
    sections=(
        Section("The learned rate against a homogeneous Poisson process and the true rate; RMSE with the term on and off",
                (View("table", ("tables/latent_poisson",), "summary"),
                 View("line", ("eval/val_event_ll",), title="validation log-likelihood of the event times")),
                "Test log-likelihood of the event times (nats per sequence), the rate's relative L2 error and the "
                "predictive RMSE, mean ± std over seeds (results/tables/latent_poisson.csv)."),
        Section("Training: ELBO with and without the Poisson term, NFE of the (z, Λ) solve",
                (View("line", ("train/loss",), title="training loss"),
                 View("line", ("train/log_lik_times",), title="log-likelihood of the times (batch mean)"),
                 View("line", ("train/nfe_forward",), title="NFE-F"))),
        Section("Figure 7: event times, learned and true rate",
                (View("image", ("figures/latent_fig7",), "summary"),)),
    ),
))

register(Experiment(
    name="gradients",
    title="Which gradient? Direct backprop, the checkpointed and the backsolve adjoint on the paper's models",
    tables=("tables/gradients.csv", "tables/gradients_training.csv"),
    figures=("figures/gradients.png",),
    metrics=("backsolve_seminorm.rel_err", "backsolve_full.rel_err", "check_rel_err", "nll_test",
             "test_rmse_window_noisy", "wall_time_s"),
    reproduce="make reproduce-gradients BUDGET=<budget>",
    sections=(
        Section("Gradient accuracy, cost and memory per method",
                (View("table", ("tables/gradients",), "summary"),
                 View("image", ("figures/gradients",), "summary")),
                "Each trained model's gradient on a fixed batch by every method, against the checkpointed "
                "adjoint's (results/tables/gradients.csv)."),
        Section("Training with each gradient method",
                (View("table", ("tables/gradients_training",), "summary"),
                 View("line", ("eval/nll_val",), title="CNF validation NLL"),
                 View("line", ("eval/val_rmse_window_noisy",), title="latent ODE validation RMSE")),
                "The Figure 5 CNF and the latent ODE (n = 30) trained with each solver.adjoint, mean ± std over "
                "seeds (results/tables/gradients_training.csv)."),
    ),
))

register(Experiment(
    name="ode_demo",
    title="Spiral ODE demo (torchdiffeq's ode_demo)",
    tables=("summary/ode_demo.csv",),
    figures=("figures/ode_demo.png",),
    metrics=("mse_heldout", "nfe_forward", "nfe_eval", "wall_time_s"),
    reproduce="python experiments/ode_demo.py budget=<budget>",
    sections=(
        Section("Held-out MSE and NFE per run",
                (View("table", ("tables/ode_demo",), "summary"),),
                "One row per run (results/summary/ode_demo.csv)."),
        Section("Training",
                (View("line", ("train/loss",), title="window loss"),
                 View("line", ("eval/mse_heldout",), title="held-out MSE"))),
        Section("True vs learned dynamics",
                (View("image", ("figures/ode_demo",), "summary"),
                 View("image", ("figures/ode_demo",), title="each run's figure"))),
    ),
))

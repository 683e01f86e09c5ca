"""The gradient study: the measurement (ndode/gradients.py), the experiment end to end at the smoke budget, its
errors, and the table builder (ndode/report/gradients.py) on hand-made records."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch

import ndode
from ndode.gradients import METHODS, GradientProblem, adjoint_for, compare, cosine, measure, rel_err

pytest.importorskip("hydra")
from _support import REPO, compose_config, load_script  # noqa: E402

from ndode.experiments import cnf, gradients, mnist  # noqa: E402
from ndode.experiments.latent_ode import LatentODETask  # noqa: E402
from ndode.experiments.latent_poisson import PoissonTask  # noqa: E402
from ndode.harness import ConfigError, RunRecordError, load_runs, run_experiment, validate  # noqa: E402
from ndode.report import gradients as G  # noqa: E402


class _Linearish(torch.nn.Module):
    """``f(y) = 3 tanh(Wy) + Wy`` with ``W ≈ −k I``: for large ``k`` the forward flow contracts by ~e^(−2k), so
    the backsolve adjoint's backward re-solve of ``y`` (which expands by as much) is ill-conditioned."""

    def __init__(self, k: float):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = torch.nn.Linear(4, 4).double()
        with torch.no_grad():
            self.lin.weight.copy_(-k * torch.eye(4, dtype=torch.float64)
                                  + 0.3 * torch.randn(4, 4, generator=g, dtype=torch.float64))
            self.lin.bias.zero_()

    def forward(self, t, y):
        return 3 * torch.tanh(self.lin(y)) + self.lin(y)


def _problem(k: float) -> GradientProblem:
    f = _Linearish(k)
    y0 = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    last = {}

    def loss(adjoint, rtol, atol):
        sol = ndode.solve(f, y0, [0.0, 1.0, 2.0], rtol=rtol, atol=atol, adjoint=adjoint)
        last["stats"] = sol.stats
        return (sol.ys[1:] ** 2).sum()

    return GradientProblem(loss, lambda: (last["stats"].nfe, last["stats"].nfe_backward), list(f.parameters()),
                           [f.lin.weight])


def _errors(problem, tol) -> dict:
    return compare({m: measure(problem, m, tol) for m in METHODS})


def test_three_methods_agree_at_a_tight_tolerance_on_a_well_conditioned_problem():
    c = _errors(_problem(1.0), 1e-8)
    assert c["same_forward"] == 1
    assert c["check_rel_err"] < 1e-10  # direct backprop = checkpointed adjoint (float64): the same discrete gradient
    assert c["checkpoint.rel_err"] == 0 and c["checkpoint.cos"] == pytest.approx(1.0)
    for m in ("backsolve_seminorm", "backsolve_full"):
        assert c[f"{m}.rel_err"] < 1e-6 and c[f"{m}.cos"] > 1 - 1e-10
        assert c[f"{m}.failed"] == 0 and c[f"{m}.nfe_backward"] > 0
    assert c["direct.nfe_backward"] is None  # backprop solves nothing backwards
    # the same forward solve for all: the same NFE-F
    assert len({c[f"{m}.nfe_forward"] for m in METHODS}) == 1
    # memory: direct backprop keeps every stage, the adjoints far less
    assert c["direct.saved_bytes"] > 5 * c["checkpoint.saved_bytes"] > 0


def test_backsolve_error_grows_at_loose_tolerance_where_reversal_is_ill_conditioned():
    p = _problem(10.0)
    loose, tight = _errors(p, 1e-3), _errors(p, 1e-8)
    assert loose["check_rel_err"] < 1e-10 and tight["check_rel_err"] < 1e-10  # the exact gradient stays exact
    assert loose["backsolve_seminorm.rel_err"] > 1.0  # useless: the reversed y drifts off the forward trajectory
    assert tight["backsolve_seminorm.rel_err"] < 0.05
    assert loose["backsolve_seminorm.rel_err"] > 100 * tight["backsolve_seminorm.rel_err"]
    # and on the benign problem the same loose tolerance is fine
    assert _errors(_problem(1.0), 1e-3)["backsolve_seminorm.rel_err"] < 0.05


def test_measure_reports_a_failing_method_instead_of_raising():
    def loss(adjoint, rtol, atol):
        if adjoint is not None:
            raise ndode.SolverError("backward pass: step size underflow at t=0.5")
        return (w ** 2).sum()

    w = torch.ones(3, requires_grad=True)
    p = GradientProblem(loss, lambda: (1, None), [w], [w])
    c = compare({"direct": measure(p, "direct", 1e-3), "checkpoint": measure(p, "direct", 1e-3),
                 "backsolve_full": measure(p, "backsolve_full", 1e-3)})
    assert c["backsolve_full.failed"] == 1 and "underflow" in c["backsolve_full.error"]
    assert math.isnan(c["backsolve_full.rel_err"]) and c["direct.failed"] == 0
    assert w.grad is None  # measure leaves no gradients behind


def test_unknown_method_and_missing_reference_are_clear_errors():
    with pytest.raises(ValueError, match=r"'adjoint'.*direct, checkpoint, backsolve_seminorm, backsolve_full"):
        adjoint_for("adjoint")
    with pytest.raises(ValueError, match="reference method 'checkpoint' was not measured"):
        compare({})
    a, b = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64)
    assert rel_err(a, b) == pytest.approx(math.sqrt(5) / 2) and cosine(a, b) == 0.0
    assert math.isnan(rel_err(a, torch.zeros(2, dtype=torch.float64)))


def test_backsolve_backward_solve_takes_the_forward_solves_options():
    """A training run's ``BacksolveAdjoint()`` solves backwards with the forward solve's options (the experiments'
    integral controller); the study's backsolve methods, which name a norm, must too, not the library's default
    (PI) controller."""
    f = _Linearish(3.0)
    y0 = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    options = {"controller": "integral"}

    def backward_nfe(adjoint):
        f.zero_grad()
        sol = ndode.solve(f, y0, [0.0, 1.0, 2.0], rtol=1e-3, atol=1e-3, options=options, adjoint=adjoint)
        (sol.ys[1:] ** 2).sum().backward()
        return sol.stats.nfe_backward, torch.cat([p.grad.reshape(-1) for p in f.parameters()])

    training, g_training = backward_nfe(ndode.BacksolveAdjoint())  # options inherited, seminorm
    study, g_study = backward_nfe(adjoint_for("backsolve_seminorm", options))
    default, _ = backward_nfe(adjoint_for("backsolve_seminorm"))
    assert study == training and torch.equal(g_study, g_training)
    assert default != training  # the default controller takes other steps: the check can fail
    full = adjoint_for("backsolve_full", options)
    assert full.norm == "full" and full.options == options


# ---- the experiment end to end (smoke budget): source runs, then the study on them
def _cnf_run(root, *overrides, name="source"):
    cfg = compose_config("cnf", "budget=smoke", "quiet=true", "logger.wandb=false", "data=moons", "flow=cnf",
                         "size=64", f"run_root={root}", *overrides)
    run_dir = root / str(cfg.experiment) / name
    run_experiment(cfg, cnf.CNFTask, run_dir=run_dir)
    return run_dir


def _study_cfg(root, *overrides):
    return compose_config("gradients", "budget=smoke", "quiet=true", "logger.wandb=false", f"run_root={root}",
                          *overrides)


@pytest.fixture(scope="module")
def cnf_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return root, _cnf_run(root)


@pytest.mark.slow
def test_study_run_records_every_method_against_the_source_run(cnf_source):
    root, src = cnf_source
    cfg = _study_cfg(root, "source=cnf", "tol=1e-4")
    run_dir = root / "gradients" / "study"
    s = run_experiment(cfg, gradients.GradientsTask, run_dir=run_dir)
    assert (run_dir / "done").exists()
    assert s["source_run_name"] == src.name and s["source_commit"] == load_runs(root / "cnf")["git_commit"][0]
    assert s["same_forward"] == 1 and s["check_rel_err"] < 1e-5  # float32 rounding
    for m in METHODS:
        assert s[f"{m}.failed"] == 0 and s[f"{m}.time_s"] > 0 and s[f"{m}.nfe_forward"] == s["direct.nfe_forward"]
    assert 0 < s["backsolve_seminorm.rel_err"] < 0.1 and s["backsolve_seminorm.cos"] > 0.99
    assert s["direct.saved_bytes"] > 10 * s["checkpoint.saved_bytes"]
    assert s["checkpoint.rel_err_tight"] > 0  # 1e-4 vs the 1e-7 reference
    # the table builder reads what the run wrote
    acc = G.accuracy_table(load_runs(root / "gradients"))
    row = acc[(acc["method"] == "backsolve_full")].iloc[0]
    assert row["rel_err"] == pytest.approx(s["backsolve_full.rel_err"]) and row["tol"] == 1e-4


def test_missing_source_run_unknown_source_and_bad_methods_are_clear_errors(tmp_path):
    cfg = _study_cfg(tmp_path, "source=latent_ode")
    with pytest.raises(RunRecordError, match=r"no finished latent_ode run .*make reproduce-latent-ode BUDGET=smoke"):
        run_experiment(cfg, gradients.GradientsTask, run_dir=tmp_path / "gradients" / "x")
    assert not (tmp_path / "gradients" / "x").exists()  # a refused run leaves nothing behind
    with pytest.raises(ConfigError, match=r"source='mnist_odenet' is not one of \['mnist', 'cnf'"):
        validate(_study_cfg(tmp_path, "source=mnist_odenet"))
    with pytest.raises(ConfigError, match=r"\['adjoint'\] not in \['direct', 'checkpoint'"):
        validate(_study_cfg(tmp_path, "methods=[direct,checkpoint,adjoint]"))
    with pytest.raises(ConfigError, match="must include 'checkpoint'"):
        validate(_study_cfg(tmp_path, "methods=[direct,backsolve_full]"))
    with pytest.raises(RunRecordError, match="not a finished run with a checkpoint.pt"):
        gradients.load_source(tmp_path, "cnf", torch.device("cpu"))


@pytest.mark.slow
def test_two_matching_source_runs_ask_for_source_run(tmp_path):
    _cnf_run(tmp_path, name="a")
    _cnf_run(tmp_path, "lr=0.01", name="b")
    with pytest.raises(RunRecordError, match=r"2 finished runs match .*\(a, b\); pass source_run="):
        gradients.find_source_run(tmp_path, "cnf", "smoke", 0)


@pytest.mark.slow
def test_training_runs_stay_out_of_the_paper_tables_and_fill_the_gradients_table(tmp_path):
    """Training runs with experiment=gradients and solver.adjoint=...: the Figure 5 table keeps its one configuration;
    the gradients table gets one row per method, with the verdict against the checkpointed adjoint."""
    _cnf_run(tmp_path, name="fig5")
    for adj in ("checkpoint", "backsolve"):
        _cnf_run(tmp_path, "experiment=gradients", f"solver.adjoint={adj}", name=f"train-{adj}")
    out = tmp_path / "out"
    assert load_script("make_tables").main(["--runs", str(tmp_path), "--budget", "smoke", "--out", str(out),
                                            "--experiment", "cnf", "--experiment", "gradients"]) == 0
    fig5 = pd.read_csv(out / "tables" / "cnf_fig5_nll.csv")
    assert list(fig5["n_seeds"]) == [1]  # the moons CNF cell was not left out for mixed configurations
    train = pd.read_csv(out / "tables" / "gradients_training.csv")
    assert list(train["adjoint"]) == ["checkpoint", "backsolve"]
    assert list(train["verdict"]) == ["reference", "few seeds"]  # one seed each: no noise estimate
    md = (out / "tables" / "gradients.md").read_text()
    assert "| CNF, Two Moons (Fig. 5) | NLL (nats) | backsolve adjoint | 1 |" in md


# the other sources: each rebuilt by its own experiment's task from the run record; the study differentiates the
# loss training differentiates (MNIST: cross-entropy of a batch; the latent ODEs: the task's objective, the -ELBO)
SOURCE_RUNS = {"mnist": ("mnist", ("model=odenet",)),
               "latent_ode": ("latent_ode", ("model=latent_ode", "data.n_obs=30")),
               "latent_poisson": ("latent_poisson", ("model.poisson=true",))}
TASKS = {"mnist": mnist.MNISTTask, "latent_ode": LatentODETask, "latent_poisson": PoissonTask}


@pytest.mark.slow
@pytest.mark.parametrize("source", list(SOURCE_RUNS))
def test_study_of_each_other_source_measures_its_training_loss(source, tmp_path, request):
    config, overrides = SOURCE_RUNS[source]
    if source == "mnist":
        overrides += (f"data.root={request.getfixturevalue('data_root')}",)
    cfg = compose_config(config, "budget=smoke", "quiet=true", "logger.wandb=false", f"run_root={tmp_path}",
                         *overrides)
    run_experiment(cfg, TASKS[source], run_dir=tmp_path / config / "source")
    s = run_experiment(_study_cfg(tmp_path, f"source={source}", "tol=1e-4"), gradients.GradientsTask,
                       run_dir=tmp_path / "gradients" / "study")
    assert s["source_run_name"] == "source" and s["source_experiment"] == config
    assert s["same_forward"] == 1 and s["check_rel_err"] < 1e-4  # float32 rounding
    for m in METHODS:
        assert s[f"{m}.failed"] == 0 and s[f"{m}.nfe_forward"] == s["direct.nfe_forward"] > 0
    for m in ("checkpoint", "backsolve_seminorm", "backsolve_full"):
        assert s[f"{m}.nfe_backward"] > 0
    assert s["backsolve_seminorm.rel_err"] < 0.5 and s["backsolve_seminorm.cos"] > 0.9
    assert 0 < s["n_params_ode"] < s["n_params"]


@pytest.mark.slow
def test_latent_ode_training_run_under_the_gradients_experiment(tmp_path):
    """make reproduce-gradients trains Table 2's latent ODE with experiment=gradients: the entry point picks the task
    by the config's schema, so the renamed run is still the latent ODE's."""
    p = subprocess.run([sys.executable, str(REPO / "experiments" / "latent_ode.py"), "experiment=gradients",
                        "model=latent_ode", "data.n_obs=30", "solver.adjoint=checkpoint", "budget=smoke", "seed=0",
                        f"run_root={tmp_path}", "quiet=true", "logger.wandb=false"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    (run,) = (tmp_path / "gradients").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_rmse_window_noisy"] > 0 and summary["nfe_backward"] > 0  # Table 2's readings, the adjoint
    assert not (tmp_path / "latent_ode").exists()


# ---- the table builder on hand-made records
def _acc_row(source, tol, errs, run):
    row = {"run": run, "budget.name": "cpu", "experiment": "gradients", "source": source, "tol": tol, "seed": 0,
           "source_run_name": f"{source}-run", "source_commit": "abcdef0123", "same_forward": 1,
           "check_rel_err": 1e-7}
    for m in METHODS:
        row.update({f"{m}.rel_err": errs.get(m, 0.0), f"{m}.cos": 1.0 - errs.get(m, 0.0), f"{m}.failed": 0,
                    f"{m}.nfe_forward": 26, f"{m}.nfe_backward": None if m == "direct" else 30,
                    f"{m}.time_s": 0.5, f"{m}.saved_bytes": 2 * 2**20, f"{m}.rel_err_ode": 0.0})
    return row


def _train_row(adj, seed, val, test):
    return {"run": f"t-{adj}-{seed}", "budget.name": "cpu", "experiment": "gradients", "flow": "cnf",
            "data": "moons", "solver.adjoint": adj, "seed": seed, "nll_val": val, "nll_test": test,
            "wall_time_s": 100.0, "nfe_forward": 150.0, "nfe_backward": 0.0 if adj == "none" else 140.0,
            "solver.rtol": 1e-5}


def test_table_builder_puts_each_number_in_its_cell():
    df = pd.DataFrame([
        _acc_row("cnf", 1e-5, {"backsolve_seminorm": 6.4e-4, "backsolve_full": 7e-4}, "a"),
        _acc_row("cnf", 1e-3, {"backsolve_seminorm": 0.25, "backsolve_full": 0.26}, "b"),
        _acc_row("mnist", 1e-3, {"backsolve_seminorm": 0.067}, "c"),
        *[_train_row("checkpoint", s, v, v + 0.01) for s, v in enumerate((0.50, 0.51, 0.52))],
        *[_train_row("backsolve", s, v, v + 0.01) for s, v in enumerate((0.505, 0.515, 0.52))],
        *[_train_row("none", s, v, v + 0.01) for s, v in enumerate((0.60, 0.61, 0.62))],
    ])
    acc = G.accuracy_table(df)
    assert len(acc) == 3 * len(METHODS)
    # rows: MNIST first (paper order), then the CNF from loose to tight... of each source, methods in METHODS order
    assert list(acc["source"].drop_duplicates()) == ["mnist", "cnf"]
    cell = acc[(acc["source"] == "cnf") & (acc["tol"] == 1e-5) & (acc["method"] == "backsolve_full")]
    assert cell["rel_err"].item() == 7e-4 and cell["saved_mib"].item() == 2.0 and cell["source_commit"].item() == "abcdef0"
    assert list(acc[acc["source"] == "cnf"]["tol"].drop_duplicates()) == [1e-3, 1e-5]
    train = G.training_table(df)
    t = train.set_index("adjoint")
    assert t.loc["checkpoint", "val_mean"] == pytest.approx(0.51) and t.loc["checkpoint", "n_seeds"] == 3
    assert t.loc["checkpoint", "verdict"] == "reference"
    assert t.loc["backsolve", "verdict"] == "tie"  # 0.0133 vs 0.51: within seed noise
    assert t.loc["none", "verdict"] == "differs" and t.loc["none", "diff_vs_checkpoint"] == pytest.approx(0.1)
    assert math.isnan(t.loc["none", "nfe_backward_mean"])  # backprop solves nothing backwards
    md = G.gradients_markdown(acc, train, "cpu")
    assert "| CNF, Two Moons (Fig. 5) | 1e-05 | backsolve, full norm | 0.0007 |" in md
    assert "| CNF, Two Moons (Fig. 5) | NLL (nats) | direct backprop | 3 | 0.61 ± 0.01 | 0.62 ± 0.01 | differs |" in md
    assert "`cnf-run` at commit abcdef0" in md
    fig = G.plot_gradients(acc, train)
    assert len(fig.axes) == 3


def test_verdict_is_a_tie_within_twice_the_standard_error():
    assert G.verdict(1.0, 0.1, 3, 1.1, 0.1, 3)[0] == "tie"
    assert G.verdict(1.0, 0.01, 3, 1.1, 0.01, 3)[0] == "differs"
    assert G.verdict(1.0, math.nan, 1, 1.1, 0.01, 3)[0] == "few seeds"

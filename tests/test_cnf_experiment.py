"""experiments/cnf.py end to end at the smoke budget, its config errors, the non-finite-loss stop, and the report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("hydra")
from _support import compose_config, load_script  # noqa: E402

from ndode.experiments import cnf  # noqa: E402
from ndode.harness import ConfigError, load_runs, read_jsonl, run_experiment  # noqa: E402
from ndode.report import cnf as C  # noqa: E402

REPO = Path(__file__).resolve().parents[1]




def compose_cnf(*overrides):
    return compose_config("cnf", "budget=smoke", "quiet=true", "logger.wandb=false", *overrides)


def _evals(run_dir, metric):
    return [r[metric] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "eval"]


@pytest.mark.parametrize("data,flow,size,metric", [
    ("U3c", "planar", 8, "kl_val"),      # Figure 4, planar
    ("moons", "planar", 8, "nll_val"),   # Figure 5, planar
])
def test_smoke_planar_runs_learn(data, flow, size, metric, tmp_path):
    cfg = compose_cnf(f"data={data}", f"flow={flow}", f"size={size}")
    run_dir = tmp_path / "run"
    s = run_experiment(cfg, cnf.CNFTask, run_dir=run_dir)
    assert (run_dir / "done").exists() and (run_dir / "arrays" / "cnf.npz").exists()
    ev = _evals(run_dir, metric)
    assert len(ev) == 2 and ev[-1] < ev[0]  # a broken gradient or flow would not improve in 20 steps
    assert s[metric] == ev[-1] and s["steps"] == 20


@pytest.mark.parametrize("data,flow,size", [("U1", "cnf", 2), ("circles", "cnf", 4), ("pinwheel", "ffjord", 8)])
def test_smoke_cnf_runs_finish_with_nfe_and_figure_arrays(data, flow, size, tmp_path):
    cfg = compose_cnf(f"data={data}", f"flow={flow}", f"size={size}")
    run_dir = tmp_path / "run"
    s = run_experiment(cfg, cnf.CNFTask, run_dir=run_dir)
    assert (run_dir / "done").exists()
    metric = "kl" if data == "U1" else "nll_test"
    assert math.isfinite(s[metric]) and math.isfinite(s["kl_val" if data == "U1" else "nll_val"])
    assert s["nfe_forward"] > 6 and s["nfe_backward"] > 6  # dopri5 at 1e-5 takes steps both ways (adjoint)
    with np.load(run_dir / "arrays" / "cnf.npz") as z:
        a = dict(z)
    g = cfg.budget.grid
    if data == "circles":
        assert a["samples"].shape == (6, cfg.budget.plot_samples, 2) and a["logq"].shape == (6, g, g)
        # at 0 % of the flow the density is the base N(0, 0.1 I)
        ax = a["axis"]
        xx, yy = np.meshgrid(ax, ax, indexing="xy")
        np.testing.assert_allclose(a["logq"][0], -(xx**2 + yy**2) / 0.2 - np.log(2 * np.pi * 0.1), rtol=1e-4)
    elif data == "U1":
        assert a["logq"].shape == (g, g) and a["log_target"].shape == (g, g)


def _env():
    env = dict(os.environ, WANDB_MODE="disabled")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.mark.slow
def test_smoke_run_of_the_command_line_entry_point(tmp_path):
    p = subprocess.run([sys.executable, "experiments/cnf.py", "budget=smoke", "data=U2c", "flow=planar", "size=2",
                        f"run_root={tmp_path}", "logger.wandb=false", "quiet=true"], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    bad = subprocess.run([sys.executable, "experiments/cnf.py", "budget=smoke", "size=0", f"run_root={tmp_path}"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "config error: size=0 must be >= 1" in bad.stderr
    runs = load_runs(tmp_path)
    assert list(runs["run_name"]) == ["budget=smoke,data=U2c,flow=planar,size=2,seed=0"]
    assert runs["task"].iloc[0] == "density"


@pytest.mark.parametrize("override,match", [
    ("data=U9", r"data='U9' is not a known target or data set; targets .*'U1', 'U2c', 'U3c', 'U4c'.*'circles'"),
    ("data=U3", r"data='U3': Rezende & Mohamed's U3 is not a density on R².*data=U3c"),
    ("data=swissroll", r"data='swissroll'.*8gaussians.*rings"),
    ("size=0", r"^size=0 must be >= 1$"),
    ("size=-3", r"^size=-3 must be >= 1$"),
    ("flow=glow", r"flow='glow' is not one of \['planar', 'cnf', 'ffjord'\]"),
])
def test_bad_config_is_refused_naming_the_option(override, match, tmp_path):
    cfg = compose_cnf(override)
    with pytest.raises(ConfigError, match=match):
        run_experiment(cfg, cnf.CNFTask, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_ffjord_on_a_target_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="flow=ffjord is for maximum likelihood"):
        run_experiment(compose_cnf("data=U1", "flow=ffjord"), cnf.CNFTask, run_dir=tmp_path / "run")


def test_non_finite_loss_stops_with_iteration_and_nfe_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    cfg = compose_cnf("data=U1", "flow=cnf", "size=2", "budget.plan.density_cnf.steps=6",
                      "budget.plan.density_cnf.checkpoint_every=2", "budget.plan.density_cnf.eval_every=0")
    run_dir = tmp_path / "run"
    real = cnf.energy
    calls = {"n": 0}

    def poisoned(name, z):  # the 5th training iteration's loss is NaN
        calls["n"] += 1
        e = real(name, z)
        return e * float("nan") if calls["n"] == 5 else e

    monkeypatch.setattr(cnf, "energy", poisoned)
    with pytest.raises(cnf.NonFiniteLoss, match=r"non-finite loss nan at iteration 5 \(NFE-F \d+\).*last good "
                                                 r"checkpoint .*checkpoint.pt is kept"):
        run_experiment(cfg, cnf.CNFTask, run_dir=run_dir)
    import shutil

    import torch

    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 4  # the last good checkpoint survives
    shutil.copy(run_dir / "checkpoint.pt", tmp_path / "ckpt4.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (run_dir / "done").exists()
    monkeypatch.setattr(cnf, "energy", real)  # resume the same run: it continues from iteration 4
    s = run_experiment(cfg, cnf.CNFTask, run_dir=run_dir)
    assert (run_dir / "done").exists() and math.isfinite(s["kl"])
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["attempts"][-1]["resumed_from_step"] == 4
    # the checkpoint copied into the directory of a run with other settings is refused (issue 30): its record
    # would claim a configuration the first four iterations never had
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(tmp_path / "ckpt4.pt", other / "checkpoint.pt")
    cfg2 = compose_cnf("data=U1", "flow=cnf", "size=2", "budget.plan.density_cnf.steps=6",
                       "budget.plan.density_cnf.lr=1e-4", "solver.rtol=1e-6")
    from ndode.harness.record import RunRecordError

    with pytest.raises(RunRecordError, match=r"another run's checkpoint .*solver.rtol"):
        run_experiment(cfg2, cnf.CNFTask, run_dir=other)
    assert sorted(p.name for p in other.iterdir()) == [".lock", "checkpoint.pt"]  # nothing written but the lock


def _runs_frame():
    rows = []
    for target in ("U1", "U3c"):
        for flow, base in (("planar", 1.0), ("cnf", 0.5)):
            for size in (2, 32):
                for seed in (0, 1):
                    rows.append({"data": target, "flow": flow, "size": size, "seed": seed, "task": "density",
                                 "kl": base + 0.1 * seed - 0.01 * size, "kl_fwd": 2 * base, "mass_out": 0.01 * seed,
                                 "target_mass_out": 1e-4, "nll_test": None, "run": f"{target}-{flow}-{size}-{seed}",
                                 "steps": 100 if flow == "cnf" else 1000, "wall_time_s": 10.0 + seed,
                                 "optim": "adam", "lr": 3e-3, "budget.momentum": 0.0, "budget.decay_factor": 0.1,
                                 "decay_step": 75 if flow == "cnf" else 750,
                                 "nfe_forward": 50.0 if flow == "cnf" else None,
                                 "nfe_backward": 60.0 if flow == "cnf" else None})
    for ds in ("circles", "moons"):
        for flow, base in (("planar", 1.2), ("cnf", 1.0 if ds == "moons" else 1.5)):
            for seed in (0, 1, 2):
                rows.append({"data": ds, "flow": flow, "size": 64, "seed": seed, "task": "mle", "kl": None,
                             "nll_test": base + 0.1 * seed, "run": f"{ds}-{flow}-{seed}", "steps": 100,
                             "wall_time_s": 5.0, "optim": "rmsprop", "lr": 1e-4, "budget.momentum": 0.9})
    return pd.DataFrame(rows)


def test_report_tables_are_mean_and_sample_std_over_seeds():
    df = _runs_frame()
    f4 = C.fig4_table(df)
    assert list(f4.columns[:11]) == ["target", "model", "size", "kl_mean", "kl_std", "kl_fwd_mean", "kl_fwd_std",
                                     "mass_out_mean", "mass_out_std", "n_seeds", "steps"]
    assert len(f4) == 8 and (f4["n_seeds"] == 2).all()
    r = f4[(f4["target"] == "U1") & (f4["model"] == "cnf") & (f4["size"] == 32)].iloc[0]
    assert r["kl_mean"] == pytest.approx(0.5 + 0.05 - 0.32)
    assert r["kl_std"] == pytest.approx(np.std([0.0, 0.1], ddof=1))
    assert r["kl_fwd_mean"] == pytest.approx(1.0) and r["mass_out_mean"] == pytest.approx(0.005)
    assert r["steps"] == 100 and r["wall_time_s"] == pytest.approx(10.5) and r["nfe_forward"] == 50.0
    f5 = C.fig5_table(df)
    assert list(f5.columns[:5]) == ["dataset", "model", "nll_mean", "nll_std", "n_seeds"]
    m = f5[(f5["dataset"] == "moons") & (f5["model"] == "cnf")].iloc[0]
    assert m["nll_mean"] == pytest.approx(1.1) and m["nll_std"] == pytest.approx(0.1) and m["n_seeds"] == 3
    c = C.claims(f4, f5, sizes=(2, 32))
    # U1 at 32: planar 1.0 + 0.05 - 0.32 = 0.73, CNF 0.23: diff 0.5, se sqrt(2 * 0.005 / 2) = 0.07: holds
    u1 = c[c["claim"] == "U1: CNF KL < planar KL at K = M = 32"].iloc[0]
    assert u1["verdict"] == "holds" and u1["diff"] == pytest.approx(0.5) and u1["se"] == pytest.approx(0.0707, abs=1e-4)
    assert c[c["claim"].str.startswith("Two Moons")]["verdict"].item() == "holds"
    assert c[c["claim"].str.startswith("Two Circles")]["verdict"].item() == "fails"
    assert len(c) == 2 * 2 + 2  # two targets x two sizes, two data sets
    cost = C.cost_table(df, C.convergence(pd.DataFrame({"run": ["U1-cnf-32-0"] * 10, "step": range(10, 110, 10),
                                                          "loss": [1.0] * 10})))
    row = cost[(cost["task"] == "density") & (cost["model"] == "cnf") & (cost["size"] == 32)].iloc[0]
    assert row["runs"] == 4 and row["flat"] == 1 and row["checked"] == 1 and row["steps"] == 100
    md = C.fig4_markdown(f4, c, "cpu", 1000, cost, 200)
    assert "mean ± std over 2 seed(s)" in md and "| U1 |" in md and "1000 samples" in md
    assert "Forward KL(p‖q)" in md and "200² nodes" in md and "outside the plotted box" in md
    assert "adam 0.003, ×0.1 from it. 75" in md and "| 50 / 60 |" in md and "| 1/1 |" in md
    assert "| U1: CNF KL < planar KL at K = M = 32 | 0.730 | 0.230 | +0.500 | 0.141 | 2, 2 | holds |" in md
    md5 = C.fig5_markdown(f5, c, "cpu", 5000, cost)
    assert "rmsprop 0.0001, momentum 0.9" in md5 and "**fails**" in md5 and "Two Moons" in md5


@pytest.mark.parametrize("planar,cnf,expected", [
    ((1.00, 0.02, 3), (0.90, 0.02, 3), "holds"),   # diff 0.1 >> 2 se = 0.033
    ((0.90, 0.02, 3), (1.00, 0.02, 3), "fails"),
    ((1.00, 0.10, 3), (0.90, 0.10, 3), "tie"),     # diff 0.1 < 2 se = 0.163
    ((1.000, 0.0001, 3), (0.992, 0.0001, 3), "tie"),  # within 0.01 nats however small the spread
    ((1.00, math.nan, 1), (0.95, math.nan, 1), "holds"),  # one seed: no se, only the 0.01 rule
    ((1.00, 0.001, 3), (0.989, 0.001, 3), "holds"),  # just over 0.01 and 2 se
])
def test_verdict_holds_fails_or_ties_by_two_standard_errors_or_a_hundredth_of_a_nat(planar, cnf, expected):
    v = C.verdict(*planar, *cnf)
    assert v["verdict"] == expected
    assert v["diff"] == pytest.approx(planar[0] - cnf[0])
    if planar[2] >= 2:
        assert v["se"] == pytest.approx(math.sqrt(planar[1] ** 2 / planar[2] + cnf[1] ** 2 / cnf[2]))
    else:
        assert math.isnan(v["se"])


def test_claims_cover_every_target_and_size_and_skip_missing_cells():
    rows = []
    for target in ("U1", "U3c", "U4c"):
        for model in ("planar", "cnf"):
            for size in (2, 8, 32):
                if target == "U4c" and size == 8 and model == "cnf":
                    continue  # a cell without runs: no verdict for it
                rows.append({"target": target, "model": model, "size": size, "kl_mean": 0.5 if model == "cnf" else 0.3,
                             "kl_std": 0.01, "n_seeds": 3})
    c = C.claims(pd.DataFrame(rows), pd.DataFrame(columns=["dataset", "model", "nll_mean", "nll_std", "n_seeds"]))
    assert len(c) == 8 and (c["verdict"] == "fails").all()
    assert "U4c: CNF KL < planar KL at K = M = 8" not in set(c["claim"])


def test_convergence_is_flat_only_when_the_last_fifth_no_longer_falls():
    steps = np.arange(10, 1010, 10)
    rng = np.random.default_rng(0)
    noise = 0.005 * rng.standard_normal(len(steps))
    flat = pd.DataFrame({"run": "flat", "step": steps, "loss": 1.0 + np.exp(-steps / 100) + noise})
    falling = pd.DataFrame({"run": "falling", "step": steps, "loss": 2.0 - steps / 1000 + noise})  # -0.1 per 100
    noisy = pd.DataFrame({"run": "noisy", "step": steps,
                          "loss": 1.0 - 0.0002 * steps + 0.3 * rng.standard_normal(len(steps))})
    c = C.convergence(pd.concat([flat, falling, noisy])).set_index("run")
    assert bool(c.loc["flat", "flat"]) and abs(c.loc["flat", "drop"]) < 0.01
    assert not c.loc["falling", "flat"] and c.loc["falling", "drop"] == pytest.approx(0.1, abs=0.01)
    # a fall of 0.02 hidden in noise of 0.3 per record: within 2 se, so not evidence of still improving
    assert bool(c.loc["noisy", "flat"]) and c.loc["noisy", "se"] > 0.05
    # the window is the last 20 % only: a fall before it does not count
    early = pd.DataFrame({"run": "early", "step": steps, "loss": np.where(steps < 790, 3.0 - steps / 400, 1.0)})
    assert bool(C.convergence(early)["flat"].item())


def test_budgets_follow_the_protocol():
    """Both flows decay their rate; the planar flow gets at least the CNF's iterations; the paper budget is the
    paper's (10,000 CNF iterations, 500,000 RMSprop steps for the planar flow of Figure 4)."""
    import yaml

    for name in ("smoke", "cpu", "paper"):
        plan = yaml.safe_load((REPO / "configs" / "budget" / "cnf" / f"{name}.yaml").read_text())["plan"]
        for task in ("density", "mle"):
            p, c = plan[f"{task}_planar"], plan[f"{task}_cnf"]
            assert p["steps"] >= c["steps"], (name, task)
            assert p["decay_factor"] < 1 and c["decay_factor"] < 1 and p["decay_at"] == c["decay_at"], (name, task)
            assert p["batch_size"] == c["batch_size"], (name, task)
    paper = yaml.safe_load((REPO / "configs" / "budget" / "cnf" / "paper.yaml").read_text())["plan"]
    assert paper["density_cnf"]["steps"] == paper["mle_cnf"]["steps"] == 10000
    assert paper["density_planar"]["steps"] == 500000 and paper["density_planar"]["optim"] == "rmsprop"


def test_a_run_reports_the_true_kl_its_validation_and_the_decay(tmp_path):
    cfg = compose_cnf("data=U4c", "flow=planar", "size=2", "budget.plan.density_planar.steps=8",
                      "budget.plan.density_planar.decay_at=0.5", "budget.plan.density_planar.log_every=1")
    run_dir = tmp_path / "run"
    s = run_experiment(cfg, cnf.CNFTask, run_dir=run_dir)
    from ndode.data.toy2d import log_z

    assert s["log_z"] == pytest.approx(log_z("U4c")) and s["decay_step"] == 4
    # the reported KL is an estimate of KL(q‖p) >= 0 (within its standard error), forward KL on the grid >= 0
    assert s["kl"] > -3 * s["kl_se"] and s["kl_fwd"] > 0 and 0 <= s["mass_out"] <= 1
    assert 0.01 < s["target_mass_out"] < 0.04  # U4c's own mass below the plotted box (toy2d)
    assert "kl_val" in s and s["best_kl_val"] <= s["kl_val"] + 1e-12
    recs = read_jsonl(run_dir / "metrics.jsonl")
    lrs = [r["lr"] for r in recs if r.get("kind") == "train"]
    assert lrs[:4] == [pytest.approx(1e-3)] * 4 and lrs[4:] == [pytest.approx(1e-4)] * 4  # x0.1 from iteration 4


@pytest.mark.slow
def test_optimizer_and_lr_are_top_level_options_in_the_run_name(tmp_path):
    p = subprocess.run([sys.executable, "experiments/cnf.py", "budget=smoke", "data=U1", "flow=planar", "size=2",
                        "optim=adam", "lr=0.003", f"run_root={tmp_path}", "logger.wandb=false", "quiet=true"],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    runs = load_runs(tmp_path)
    assert list(runs["run_name"]) == ["budget=smoke,data=U1,flow=planar,lr=0.003,optim=adam,size=2,seed=0"]
    assert runs["optim"].item() == "adam" and runs["lr"].item() == 0.003
    bad = compose_cnf("optim=sgd")
    with pytest.raises(ConfigError, match=r"optim='sgd' is not one of \['adam', 'rmsprop'\]"):
        run_experiment(bad, cnf.CNFTask, run_dir=tmp_path / "bad")


select = load_script("select_cnf")
yaml = pytest.importorskip("yaml")


def test_selection_spec_is_the_same_procedure_for_both_flows():
    for budget in ("smoke", "cpu", "paper"):
        spec = select.load_spec(budget)
        plan = yaml.safe_load((REPO / "configs" / "budget" / "cnf" / f"{budget}.yaml").read_text())["plan"]
        for task in ("density", "mle"):
            p, c = spec[f"{task}_planar"], spec[f"{task}_cnf"]
            assert p["candidates"] == c["candidates"] and p["cells"] == c["cells"], (budget, task)
            # each flow's selection runs are the same fraction of its own final iterations
            assert p["steps"] / plan[f"{task}_planar"]["steps"] == pytest.approx(
                c["steps"] / plan[f"{task}_cnf"]["steps"]), (budget, task)
        assert spec["seed"] not in (0, 1, 2)  # never a seed of the tables
    with pytest.raises(ValueError, match=r"--budget 'huge'.*budgets: \['cpu', 'paper', 'smoke'\]"):
        select.load_spec("huge")


def test_selection_sweep_lines_and_the_choice_from_validation_runs():
    spec = {"seed": 100, "density_cnf": {"cells": {"data": ["U1", "U3c"], "size": [8]}, "steps": 50,
                                         "candidates": {"adam": [1e-3, 3e-3], "rmsprop": [1e-4]},
                                         "extra": "solver.max_num_steps=1000"}}
    assert select.sweep_lines(spec, "density_cnf") == [
        "data=U1,U3c size=8 flow=cnf seed=100 optim=adam lr=0.001,0.003 budget.plan.density_cnf.steps=50 "
        "solver.max_num_steps=1000",
        "data=U1,U3c size=8 flow=cnf seed=100 optim=rmsprop lr=0.0001 budget.plan.density_cnf.steps=50 "
        "solver.max_num_steps=1000"]
    rows = []
    for (optim, lr), (u1, u3) in {("adam", 1e-3): (0.05, 0.30), ("adam", 3e-3): (0.04, 0.20),
                                  ("rmsprop", 1e-4): (0.01, math.nan)}.items():
        for data, v in (("U1", u1), ("U3c", u3)):
            rows.append({"flow": "cnf", "data": data, "size": 8, "optim": optim, "lr": lr, "seed": 100, "steps": 50,
                         "status": "failed" if math.isnan(v) else "done", "kl_val": v})
    # a run of another seed or length is not a selection run of this spec
    rows.append({"flow": "cnf", "data": "U3c", "size": 8, "optim": "adam", "lr": 1e-3, "seed": 0, "steps": 50,
                 "status": "done", "kl_val": -5.0})
    t = select.selection_table(pd.DataFrame(rows), spec, "density_cnf")
    assert list(t["val"]) == [pytest.approx(0.175), pytest.approx(0.12), math.inf]  # the failed candidate: worst
    assert list(t["chosen"]) == [False, True, False]
    assert select.chosen(t) == "optim=adam lr=0.003"
    md = select.selection_markdown([t], "cpu", spec)
    assert "| adam | 0.003 | 0.0400 | 0.2000 | 0.1200 | **yes** |" in md and "inf" in md
    with pytest.raises(LookupError, match="make select-cnf"):
        select.chosen(select.selection_table(pd.DataFrame(), spec, "density_cnf"))


def test_selection_command_line_refuses_what_it_cannot_do(tmp_path, capsys):
    assert select.main(["--budget", "smoke", "--root", str(tmp_path), "choose", "density_cnf"]) == 2
    assert "no candidate has a finished selection run" in capsys.readouterr().err  # never the plan's defaults
    assert select.main(["--budget", "smoke", "--root", str(tmp_path), "choose"]) == 2
    assert "choose needs a key" in capsys.readouterr().err
    assert select.main(["--budget", "smoke", "--root", str(tmp_path), "--publish", "report"]) == 2
    assert "never published" in capsys.readouterr().err
    assert select.main(["--budget", "smoke", "sweep", "mle_cnf"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("data=moons size=8 flow=cnf seed=100 optim=adam")


@pytest.mark.slow
def test_make_figures_draws_figure4_its_curves_and_the_toys_from_smoke_runs(tmp_path, monkeypatch):
    """scripts/make_figures.py's cnf figures from real records: Figure 4 with its learning curves (train loss and
    validation KL read from each run's metrics.jsonl) and the toy grid with its NFE curves."""
    seen = {}

    def spy(name):  # records the plot function's arguments, then draws as usual
        real = getattr(C, name)

        def plot(*args, **kwargs):
            seen[name] = args
            return real(*args, **kwargs)
        return plot

    for name in ("plot_curves", "plot_toy"):
        monkeypatch.setattr(C, name, spy(name))
    runs = tmp_path / "runs"
    for data, flow, size in (("U1", "planar", 2), ("U1", "cnf", 2), ("pinwheel", "ffjord", 8)):
        cfg = compose_cnf(f"data={data}", f"flow={flow}", f"size={size}")
        run_experiment(cfg, cnf.CNFTask, run_dir=runs / "cnf" / f"budget=smoke,data={data},flow={flow},size={size},seed=0")
    out = tmp_path / "figures"
    assert load_script("make_figures").main(["--runs", str(runs), "--out", str(out), "--budget", "smoke",
                                             "--experiment", "cnf"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cnf_fig4.png", "cnf_fig4_curves.png", "cnf_toy.png"]

    def logged(flow, kind, key):  # what the run's metrics.jsonl holds
        d = runs / "cnf" / f"budget=smoke,data=U1,flow={flow},size=2,seed=0"
        return [r[key] for r in read_jsonl(d / "metrics.jsonl") if r.get("kind") == kind and key in r]

    curves = seen["plot_curves"][0]  # every training loss and validation KL of both U1 runs, none else
    for flow in ("planar", "cnf"):
        for kind, key in (("train", "loss"), ("eval", "kl_val")):
            got = curves[(curves["model"] == flow) & (curves["kind"] == kind)]["value"].tolist()
            assert got == logged(flow, kind, key) and len(got) >= (2 if kind == "train" else 1)
    assert set(curves["row"]) == {"U1"} and curves.groupby("model")["steps"].nunique().eq(1).all()
    toy = seen["plot_toy"][1]
    assert set(toy["dataset"]) == {"pinwheel"} and len(toy) >= 2 and (toy["nfe_forward"] > 0).all()

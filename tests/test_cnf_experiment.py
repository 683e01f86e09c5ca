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
from _experiments import compose_config, load_experiment  # noqa: E402

from ndode.harness import ConfigError, load_runs, read_jsonl, run_experiment  # noqa: E402
from ndode.report import cnf as C  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


cnf = load_experiment("cnf")


def compose_cnf(*overrides):
    return compose_config("cnf", "budget=smoke", "quiet=true", "logger.wandb=false", *overrides)


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _evals(run_dir, metric):
    return [r[metric] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "eval"]


@pytest.mark.parametrize("data,flow,size,metric", [
    ("U3", "planar", 8, "kl"),       # Figure 4, planar
    ("moons", "planar", 8, "nll_test"),  # Figure 5, planar
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
    assert math.isfinite(s[metric])
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


def test_smoke_run_of_the_command_line_entry_point(tmp_path):
    p = subprocess.run([sys.executable, "experiments/cnf.py", "budget=smoke", "data=U2", "flow=planar", "size=2",
                        f"run_root={tmp_path}", "logger.wandb=false", "quiet=true"], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    bad = subprocess.run([sys.executable, "experiments/cnf.py", "budget=smoke", "size=0", f"run_root={tmp_path}"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "config error: size=0 must be >= 1" in bad.stderr
    runs = load_runs(tmp_path)
    assert list(runs["run_name"]) == ["budget=smoke,data=U2,flow=planar,size=2,seed=0"]
    assert runs["task"].iloc[0] == "density"


@pytest.mark.parametrize("override,match", [
    ("data=U9", r"data='U9' is not a known target or data set; targets .*'U1', 'U2', 'U3', 'U4'.*'circles', 'moons'"),
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
    # or continue with other settings: the checkpoint copied into the other run's directory
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(tmp_path / "ckpt4.pt", other / "checkpoint.pt")
    cfg2 = compose_cnf("data=U1", "flow=cnf", "size=2", "budget.plan.density_cnf.steps=6",
                       "budget.plan.density_cnf.lr=1e-4", "solver.rtol=1e-6")
    s2 = run_experiment(cfg2, cnf.CNFTask, run_dir=other)
    assert math.isfinite(s2["kl"])
    assert json.loads((other / "meta.json").read_text())["attempts"][-1]["resumed_from_step"] == 4


def _runs_frame():
    rows = []
    for target in ("U1", "U3"):
        for flow, base in (("planar", 1.0), ("cnf", 0.5)):
            for size in (2, 32):
                for seed in (0, 1):
                    rows.append({"data": target, "flow": flow, "size": size, "seed": seed, "task": "density",
                                 "kl": base + 0.1 * seed - 0.01 * size, "nll_test": None})
    for ds in ("circles", "moons"):
        for flow, base in (("planar", 1.2), ("cnf", 1.0 if ds == "moons" else 1.5)):
            for seed in (0, 1, 2):
                rows.append({"data": ds, "flow": flow, "size": 64, "seed": seed, "task": "mle", "kl": None,
                             "nll_test": base + 0.1 * seed})
    return pd.DataFrame(rows)


def test_report_tables_are_mean_and_sample_std_over_seeds():
    df = _runs_frame()
    f4 = C.fig4_table(df)
    assert list(f4.columns) == ["target", "model", "size", "kl_mean", "kl_std", "n_seeds"]
    assert len(f4) == 8 and (f4["n_seeds"] == 2).all()
    r = f4[(f4["target"] == "U1") & (f4["model"] == "cnf") & (f4["size"] == 32)].iloc[0]
    assert r["kl_mean"] == pytest.approx(0.5 + 0.05 - 0.32)
    assert r["kl_std"] == pytest.approx(np.std([0.0, 0.1], ddof=1))
    f5 = C.fig5_table(df)
    assert list(f5.columns) == ["dataset", "model", "nll_mean", "nll_std", "n_seeds"]
    m = f5[(f5["dataset"] == "moons") & (f5["model"] == "cnf")].iloc[0]
    assert m["nll_mean"] == pytest.approx(1.1) and m["nll_std"] == pytest.approx(0.1) and m["n_seeds"] == 3
    c = C.claims(f4, f5)
    assert c[c["claim"].str.startswith("U1")]["holds"].item() is True
    assert c[c["claim"].str.startswith("Two Moons")]["holds"].item() is True
    assert c[c["claim"].str.startswith("Two Circles")]["holds"].item() is False
    md = C.fig4_markdown(f4, c, "cpu", 1000, {"Planar flow": 100, "CNF": 10})
    assert "mean ± std over 2 seed(s)" in md and "| U1 |" in md and "1000 samples" in md

"""Defaults a newcomer survives: budget=auto and device=auto, the plan printed before a sweep, `make help`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("hydra")
from _support import CONFIGS, compose_config, register_schema_of  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from ndode.experiments import ode_demo  # noqa: E402
from ndode.harness import resolve_device, run_experiment  # noqa: E402
from ndode.harness.config import auto_budget  # noqa: E402
from ndode.harness.plan import expand_sweep, plan_runs, print_plan  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHORT = ["budget.steps=5", "budget.refine_steps=1"]


def hydra_compose(name: str, *overrides: str):
    """The config with its ``hydra`` node (run directory, launcher), as a job of the command line gets it."""
    return compose_config(name, *overrides, hydra=True)


def _no_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: auto resolves to paper here (the monkeypatched test covers it)")


def test_auto_resolves_to_cpu_on_a_machine_without_cuda():
    _no_cuda()
    assert auto_budget() == "cpu" and resolve_device("auto") == torch.device("cpu")
    for name in ("ode_demo", "mnist"):
        cfg = hydra_compose(name)
        assert cfg.budget.name == "cpu" and cfg.device == "auto"
        cpu = hydra_compose(name, "budget=cpu")
        assert cfg.budget.steps == cpu.budget.steps  # the cpu budget's own numbers, not just its name


def test_auto_resolves_to_paper_and_cuda_where_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert auto_budget() == "paper" and resolve_device("auto") == torch.device("cuda")
    for name in ("ode_demo", "mnist"):
        cfg = hydra_compose(name)
        paper = hydra_compose(name, "budget=paper")
        assert cfg.budget.name == "paper" and cfg.budget.steps == paper.budget.steps
        assert cfg.hydra.run.dir == paper.hydra.run.dir


def test_auto_and_cpu_give_the_same_run_name():
    _no_cuda()
    for name, extra in (("ode_demo", ["solver.method=rk4"]), ("mnist", ["model=resnet"])):
        dirs = {hydra_compose(name, *extra, *b).hydra.run.dir for b in ([], ["budget=auto"], ["budget=cpu"])}
        assert len(dirs) == 1 and "budget=cpu," in dirs.pop()
    # device is not part of the name either: device=auto and device=cpu run in the same directory
    assert hydra_compose("ode_demo", "device=cpu").hydra.run.dir == hydra_compose("ode_demo").hydra.run.dir


def test_resolved_budget_and_device_are_printed_and_recorded(tmp_path, caplog):
    _no_cuda()
    cfg = hydra_compose("ode_demo", *SHORT, f"run_root={tmp_path}")
    run_dir = Path(cfg.hydra.run.dir)
    with open_dict(cfg):
        del cfg["hydra"]
    with caplog.at_level("INFO", logger="ndode.harness"):
        run_experiment(cfg, ode_demo.ODEDemoTask, run_dir=run_dir)
    assert "budget cpu (auto: no CUDA)" in caplog.text and "device cpu (auto)" in caplog.text
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["budget"] == {"requested": "auto", "resolved": "cpu"}
    assert meta["device"] == {"requested": "auto", "resolved": "cpu"}
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["budget"]["name"] == "cpu" and config["device"] == "cpu"


# ------------------------------------------------------------------ the plan printed before a sweep


def _plan(name, overrides, jobs=2, requested="auto"):
    register_schema_of(name)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return print_plan(name, overrides, jobs,
                          lambda job: compose(name, overrides=list(job), return_hydra_config=True), requested)


def test_expand_sweep_like_hydra():
    jobs = expand_sweep(["model=odenet,mlp", "budget=cpu", "seed=0,1"])
    assert jobs == [["model=odenet", "budget=cpu", "seed=0"], ["model=odenet", "budget=cpu", "seed=1"],
                    ["model=mlp", "budget=cpu", "seed=0"], ["model=mlp", "budget=cpu", "seed=1"]]


def test_plan_of_paper_on_cpu_warns_and_never_scales_another_budgets_runs(tmp_path, capsys):
    """The published summary holds cpu runs only: a paper-budget plan reads none of them (their pace is another
    budget's), says it has no estimate, and still warns that the paper's schedule on a CPU is long."""
    _no_cuda()
    text = _plan("mnist", ["model=odenet,rknet,resnet,mlp", "budget=paper", "seed=0", f"run_root={tmp_path}"],
                 requested="paper")
    lines = text.splitlines()
    assert lines[0].startswith("plan: mnist, 4 run(s) at budget paper on cpu, 2 at a time")
    assert all("74880 iters" in line and "no measurement yet" in line for line in lines[1:5])
    assert "README figures" not in text
    assert next(line for line in lines if line.startswith("estimate:")).startswith("estimate: unknown")
    warning = next(line for line in lines if line.startswith("WARNING"))
    assert "paper's schedule on the CPU" in warning and "BUDGET=cpu" in warning and "budget=cpu" in warning
    assert "far less (~" in warning  # the cpu budget's own estimate, from the cpu runs
    assert text in capsys.readouterr().out


def test_plan_at_the_cpu_budget_does_not_warn(tmp_path):
    _no_cuda()
    text = _plan("mnist", ["model=odenet,mlp", "seed=0", f"run_root={tmp_path}"])
    assert "budget cpu (auto: no CUDA)" in text and "WARNING" not in text
    assert "estimate: ~" in text and "README figures" in text


def test_plan_prefers_measured_pace_on_this_machine(tmp_path):
    _no_cuda()
    measured = tmp_path / "ode_demo" / "budget=cpu,budget.refine_steps=1,budget.steps=5,seed=0"
    measured.mkdir(parents=True)
    (measured / "metrics.jsonl").write_text('{"step": 5, "kind": "train", "time_s": 50.0}\n')
    text = _plan("ode_demo", [*SHORT, "seed=1", f"run_root={tmp_path}"], jobs=1)
    assert f"~50 s  measured: {measured}" in text and "(source: measured)" in text
    (measured / "done").write_text("x")
    text = _plan("ode_demo", [*SHORT, "seed=0,1", f"run_root={tmp_path}"], jobs=1)
    assert "finished: skipped" in text and "estimate: ~50 s wall" in text


def test_plan_without_any_measurement_says_so(tmp_path):
    text = _plan("ode_demo", ["budget=smoke", "data.n_times=500", f"run_root={tmp_path}"], jobs=1)
    assert "no measurement yet" in text and text.splitlines()[-1].startswith("estimate: unknown")


@pytest.mark.slow
def test_cli_multirun_prints_the_plan_then_skips_the_auto_run_at_cpu(tmp_path):
    """`budget=auto` (the default) and `budget=cpu` are one run: the sweep's plan and the run both say so."""
    _no_cuda()
    cfg = hydra_compose("ode_demo", *SHORT, f"run_root={tmp_path}", "quiet=true")
    auto_dir = Path(cfg.hydra.run.dir)
    with open_dict(cfg):
        del cfg["hydra"]
    run_experiment(cfg, ode_demo.ODEDemoTask, run_dir=auto_dir)  # budget auto, in process
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, str(REPO / "experiments" / "ode_demo.py"), "-m", "budget=cpu", "seed=0,1",
                        *SHORT, f"run_root={tmp_path}", "quiet=true"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert out.index("plan: ode_demo, 2 run(s) at budget cpu on cpu, 1 at a time") < out.index("Launching 2 jobs")
    assert "finished: skipped" in out and f"measured: {auto_dir}" in out and "(source: measured)" in out
    assert f"skip: {auto_dir} is finished" in out
    assert (auto_dir.parent / auto_dir.name.replace("seed=0", "seed=1") / "done").exists()


def test_make_help_shows_real_values():
    if shutil.which("make") is None:
        pytest.skip("no make")
    p = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "$(" not in p.stdout and "create .venv and install" in p.stdout
    assert "BUDGET=auto" in p.stdout and "VENV=.venv" in p.stdout and "JOBS=2" in p.stdout
    p = subprocess.run(["make", "-s", "help", "BUDGET=cpu", "VENV=/opt/env"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert "BUDGET=cpu" in p.stdout and "create /opt/env and install" in p.stdout


def test_every_experiment_config_defaults_to_auto():
    """Each primary config picks `budget: auto` and its numbers through the resolver, so BUDGET=auto works for all.

    A new experiment's defaults: `- budget: auto` and `- budget/<experiment>@budget: ${ndode_budget:${budget}}`.
    """
    import yaml

    for path in sorted(CONFIGS.glob("*.yaml")):
        defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
        entries = {k: v for d in defaults if isinstance(d, dict) for k, v in d.items()}
        own = [k for k in entries if k.startswith("budget/") and k.endswith("@budget")]
        if not own:
            continue  # not an experiment's primary config
        assert entries.get("budget") == "auto", f"{path.name}: `- budget: auto` in defaults"
        assert entries[own[0]] == "${ndode_budget:${budget}}", f"{path.name}: {own[0]}: ${{ndode_budget:${{budget}}}}"


def test_plan_ignores_paces_measured_on_another_device(tmp_path):
    _no_cuda()
    measured = tmp_path / "ode_demo" / "budget=cpu,budget.refine_steps=1,budget.steps=5,seed=0"
    measured.mkdir(parents=True)
    (measured / "metrics.jsonl").write_text('{"step": 5, "kind": "train", "time_s": 50.0}\n')
    (measured / "config.yaml").write_text("device: cuda:0\n")
    text = _plan("ode_demo", [*SHORT, "seed=1", f"run_root={tmp_path}"], jobs=1)
    assert "measured" not in text and "estimate: unknown" in text


def test_plan_counts_only_measurements_of_the_same_configuration(tmp_path, monkeypatch):
    """A record or a summary row with the planned run's name but another configuration (made before a budget file
    changed) says nothing about its pace: the plan computes the run's config_id as the collector does and skips
    the others (the latent-ODE plan once printed ~6.2 h for a 68-min grid from full-batch records)."""
    _no_cuda()
    from ndode.harness import load_runs

    cfg = hydra_compose("ode_demo", *SHORT, f"run_root={tmp_path}", "quiet=true", "seed=0")
    run_dir = Path(cfg.hydra.run.dir)
    with open_dict(cfg):
        del cfg["hydra"]
    run_experiment(cfg, ode_demo.ODEDemoTask, run_dir=run_dir)
    recorded = load_runs(tmp_path).iloc[0]
    # the same name, another configuration: its record must not time the planned seed 1
    other = run_dir.parent / run_dir.name.replace("seed=0", "seed=2")
    shutil.copytree(run_dir, other)
    (other / "done").unlink()
    text = (other / "config.yaml").read_text()
    (other / "config.yaml").write_text(text.replace("lr: ", "lr: 0.5 #", 1))
    (other / "metrics.jsonl").write_text('{"step": 5, "kind": "train", "time_s": 5000.0}\n')
    shutil.rmtree(run_dir)  # only the other configuration's record is left on disk
    summary = tmp_path / "summary"
    summary.mkdir()
    row = {k: recorded[k] for k in ("run", "budget.name", "config_id")}
    with open(summary / "ode_demo.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*row, "steps", "wall_time_s", "device"])
        w.writeheader()
        w.writerow({**row, "steps": 5, "wall_time_s": 20.0, "device": "cpu"})  # this configuration: 4 s per step
        w.writerow({**row, "config_id": "0123456789", "steps": 5, "wall_time_s": 9000.0, "device": "cpu"})
    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        runs = plan_runs("ode_demo", [[*SHORT, f"run_root={tmp_path}", "quiet=true", "seed=1"]],
                         lambda job: compose("ode_demo", overrides=list(job), return_hydra_config=True),
                         summary_dir=summary)
    assert runs[0].config_id == recorded["config_id"]  # the plan's id is the collector's
    assert runs[0].seconds == pytest.approx(20.0) and "README figures" in runs[0].source

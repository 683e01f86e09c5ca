"""The experiment harness, in process: configs, run records, skip/resume rules, W&B mirror, collector.

Runs go through Hydra's compose API with the ``ode_demo`` experiment at the
smoke budget; the command-line paths (CLI, SIGKILL + resume, sweeps) are in
``test_harness_cli.py``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

pytest.importorskip("hydra")
from _support import CONFIGS, assert_complete, compose_demo, load_script, smoke  # noqa: E402
from hydra.errors import ConfigCompositionException  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import ndode  # noqa: E402
from ndode import wandb_mirror  # noqa: E402
from ndode.experiments import ode_demo  # noqa: E402
from ndode.harness import (  # noqa: E402
    ConfigError,
    RunRecord,
    RunRecordError,
    load_runs,
    run_experiment,
)
from ndode.harness.config import NAME_EXCLUDED_KEYS, run_name, solver_kwargs  # noqa: E402
from ndode.harness.record import atomic_write_text, read_jsonl  # noqa: E402
from ndode.report.tables import TABLES, markdown_table, runs_table, seed_table  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"



# ------------------------------------------------------------------ configs


def test_primary_config_composes_with_groups():
    cfg = compose_demo("solver=rk4", "budget=paper", "seed=3")
    assert cfg.solver.method.name == "rk4" and cfg.solver.step_size == 0.025
    assert cfg.budget.name == "paper" and cfg.budget.steps > 1000 and cfg.seed == 3
    assert solver_kwargs(cfg.solver) == dict(method="rk4", rtol=1e-5, atol=1e-6, options={"step_size": 0.025},
                                             adjoint=None)
    assert compose_demo("solver=dopri5_adjoint").solver.adjoint.name == "backsolve"
    assert compose_demo("solver=dopri5_adjoint").solver.adjoint and not compose_demo().solver.adjoint  # reads as a bool
    ck = solver_kwargs(compose_demo("solver.adjoint=checkpoint").solver)["adjoint"]
    assert isinstance(ck, ndode.CheckpointAdjoint)
    with pytest.raises(Exception, match="solver.adjoint=true") as e:  # the choice is named, not a bool
        compose_demo("solver.adjoint=true")
    assert "expected one of [none, backsolve, checkpoint]" in str(e.value.__cause__)
    assert compose_demo("budget=smoke").budget.steps == 30 and compose_demo("budget=smoke").budget.refine_steps == 1


@pytest.mark.parametrize("override, words", [
    ("solver.rtoll=1e-3", ["rtoll", "solver"]),  # a typo in a key
    ("solver.rtol=abc", ["rtol", "abc"]),  # a wrong type
    ("solver.method=rk5", ["rk5", "dopri5", "rk4"]),  # a value outside the allowed set, which is listed
    ("budget=tiny", ["tiny", "smoke", "cpu", "paper"]),  # an unknown budget, with the known ones
    ("seed=one", ["seed", "one"]),
])
def test_bad_override_fails_while_composing(override, words):
    with pytest.raises(ConfigCompositionException) as err:
        compose_demo(override)
    msg = str(err.value) + str(err.value.__cause__)
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("override, words", [
    ("solver.rtol=-1", ["solver.rtol", "-1"]),
    ("solver.adaptive=true solver.method=rk4", ["solver.adaptive", "rk4"]),
    ("solver.step_size=null solver.method=dopri5 solver.adaptive=false", ["solver.step_size", "dopri5"]),
    ("budget.refine_steps=30", ["budget.refine_steps", "30"]),
    ("optim.name=sgd", ["optim.name", "sgd", "adam"]),
    ("logger.mode=loud", ["logger.mode", "loud", "offline"]),
    ("+solver.rtoll=1e-3", ["solver.rtoll", "rtol"]),  # `+` appends past the schema: refused at start
])
def test_bad_value_fails_before_any_work(tmp_path, override, words):
    cfg, run_dir = smoke(tmp_path, *override.split())
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, ode_demo.ODEDemoTask, run_dir=run_dir)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    assert not run_dir.exists()


def test_name_excluded_keys_match_hydra_config():
    hydra_cfg = yaml.safe_load((CONFIGS / "harness.yaml").read_text())
    assert tuple(hydra_cfg["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]) == NAME_EXCLUDED_KEYS


def test_run_name():
    assert run_name("", "cpu", 0) == "budget=cpu,seed=0"
    assert run_name("solver.method=rk4", "smoke", 3) == "budget=smoke,solver.method=rk4,seed=3"
    assert run_name("model.dims=[1, 2]", "cpu", 0) == "budget=cpu,model.dims=_1,_2_,seed=0"
    long = run_name(",".join(f"k{i}=v{i}" for i in range(60)), "cpu", 0)
    assert len(long) <= 120 and long != run_name(",".join(f"k{i}=v{i}" for i in range(61)), "cpu", 0)


# ------------------------------------------------------------------ run records


def test_compose_smoke_run_writes_a_complete_record(tmp_path):
    cfg, run_dir = smoke(tmp_path)
    summary = run_experiment(cfg, ode_demo.ODEDemoTask, run_dir=run_dir)
    meta = assert_complete(run_dir)
    assert len(meta["attempts"]) == 1 and meta["attempts"][0]["resumed_from_step"] is None
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["budget"]["name"] == "smoke" and config["seed"] == 0 and config["solver"]["method"] == "dopri5"
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert summary["steps"] == 30 and summary["nfe_forward"] > 0
    recs = read_jsonl(run_dir / "metrics.jsonl")
    evals = [r["mse_heldout"] for r in recs if r["kind"] == "eval"]
    assert summary["mse_heldout"] == evals[-1] and summary["best_mse_heldout"] == min(evals)
    # it learns: the held-out error falls at every evaluation of the smoke budget (a broken model stays put)
    assert evals[0] > evals[1] > evals[2] and evals[2] < 0.2 * evals[0], evals
    assert [r["step"] for r in recs if r["kind"] == "eval"] == [10, 20, 30]
    assert [r["step"] for r in recs if r["kind"] == "train"] == [5, 10, 15, 20, 25, 30]
    assert all("refine_mse" in r for r in recs if r["kind"] == "train" and r["step"] == 30)
    assert (run_dir / "figures" / "ode_demo.png").stat().st_size > 10_000
    assert not (run_dir / "wandb").exists()  # WANDB_MODE=disabled writes nothing


def test_finished_run_is_skipped(tmp_path, caplog):
    cfg, run_dir = smoke(tmp_path, "budget.steps=6", "budget.refine_steps=1")
    first = run_experiment(cfg, ode_demo.ODEDemoTask, run_dir=run_dir)
    stamp = (run_dir / "done").stat().st_mtime_ns
    calls = []

    def never(cfg, ctx):
        calls.append(1)
        raise AssertionError("a finished run must not build its task")

    with caplog.at_level(logging.INFO, logger="ndode.harness"):
        again = run_experiment(cfg, never, run_dir=run_dir)
    assert again == first and not calls and (run_dir / "done").stat().st_mtime_ns == stamp
    assert any("skip:" in r.message for r in caplog.records)


def test_run_directory_with_another_config_is_refused(tmp_path):
    cfg, run_dir = smoke(tmp_path, "budget.steps=6", "budget.refine_steps=1")
    run_dir.mkdir(parents=True)
    other = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    other["optim"]["lr"] = 0.5
    (run_dir / "config.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(RunRecordError, match="optim.lr"):
        run_experiment(cfg, ode_demo.ODEDemoTask, run_dir=run_dir)


def test_metrics_truncation_drops_later_and_torn_records(tmp_path):
    rec = RunRecord(tmp_path)
    for s in (1, 2, 3):
        rec.append_metrics({"step": s, "kind": "train", "loss": s})
    rec.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "kind": "tr')  # a write cut by SIGKILL
    assert rec.truncate_metrics(2) == 2
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("ndode.harness.record.os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


# ------------------------------------------------------------------ W&B mirror


def test_wandb_mode_resolution(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mirror.resolve_mode(None) == "offline"
    assert wandb_mirror.resolve_mode("online") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mirror.resolve_mode("online") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert wandb_mirror.resolve_mode(None) == "offline"


def test_wandb_online_without_key_mirrors_offline(tmp_path, monkeypatch, caplog):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    seen = {}

    def fake_init(**kw):
        seen.update(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(wandb, "init", fake_init)
    with caplog.at_level(logging.WARNING, logger="ndode.harness"):
        m = wandb_mirror.WandbMirror(enabled=True, mode=None, project="p", entity=None, run_dir=tmp_path, name="n",
                                     group="g", tags=[], config={})
    assert seen["mode"] == "offline" and not m.active
    assert any("no API key" in r.message for r in caplog.records)


def test_wandb_failure_never_fails_the_run(tmp_path, monkeypatch, caplog):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")

    def broken_init(**kw):
        raise ConnectionError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    cfg, run_dir = smoke(tmp_path, "budget.steps=6", "budget.refine_steps=1")
    with caplog.at_level(logging.WARNING, logger="ndode.harness"):
        run_experiment(cfg, ode_demo.ODEDemoTask, run_dir=run_dir)
    assert_complete(run_dir)
    warned = [r for r in caplog.records if "W&B" in r.message]
    assert len(warned) == 1 and "no network" in warned[0].message


@pytest.mark.slow
def test_wandb_offline_run_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg, run_dir = smoke(tmp_path, "budget.steps=6", "budget.refine_steps=1")
    summary = run_experiment(cfg, ode_demo.ODEDemoTask, run_dir=run_dir)
    assert_complete(run_dir)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    assert list(offline[0].glob("run-*.wandb")), list(offline[0].iterdir())
    assert summary["mse_heldout"] > 0


# ------------------------------------------------------------------ collector and tables


def test_collector_golden(tmp_path):
    df = load_runs(DATA / "runs")
    assert len(df) == 4 and set(df["status"]) == {"done"}  # the unfinished sample run is left out
    assert len(load_runs(DATA / "runs", finished_only=False)) == 5
    assert {"solver.method", "budget.name", "seed", "mse_heldout", "git_commit", "run"} <= set(df.columns)
    spec = TABLES["ode_demo"]
    table = markdown_table(seed_table(df, spec.by, spec.metrics), spec)
    assert table == (DATA / "expected" / "ode_demo_table.md").read_text()
    csv = runs_table(df, spec).to_csv(index=False)
    assert csv == (DATA / "expected" / "ode_demo_runs.csv").read_text()


def test_seed_table_statistics():
    import pandas as pd

    df = pd.DataFrame({"a": ["x", "x", "x", "y"], "seed": [0, 1, 2, 0], "m": [1.0, 2.0, 3.0, 5.0]})
    t = seed_table(df, ["a"], ["m"])
    assert t["n_seeds"].tolist() == [3, 1] and t["m_mean"].tolist() == [2.0, 5.0]
    assert t["m_std"][0] == pytest.approx(1.0) and t["m_std"].isna()[1]  # sample std (ddof=1), none for one seed
    with pytest.raises(KeyError, match="nope"):
        seed_table(df, ["nope"], ["m"])


def test_collector_refuses_summary_key_that_shadows_config(tmp_path):
    d = tmp_path / "x" / "run"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("seed: 0\n")
    (d / "meta.json").write_text("{}")
    (d / "summary.json").write_text('{"seed": 1}')
    (d / "done").write_text("")
    with pytest.raises(ValueError, match="seed"):
        load_runs(tmp_path)


def test_sync_finds_unsynced_offline_runs(tmp_path):
    sync = load_script("wandb_sync")
    a = tmp_path / "ode_demo" / "r1" / "wandb" / "offline-run-1-abc"
    b = tmp_path / "ode_demo" / "r2" / "wandb" / "offline-run-2-def"
    for d in (a, b):
        d.mkdir(parents=True)
        (d / f"run-{d.name[-3:]}.wandb").write_text("")
    (b / "run-def.wandb.synced").write_text("")
    assert sync.pending(tmp_path) == [a]
    assert sync.main(["--runs", str(tmp_path), "--dry-run"]) == 0

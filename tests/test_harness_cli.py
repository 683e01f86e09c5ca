"""The harness from the command line: Hydra CLI, SIGKILL + resume, sweeps (basic, joblib, submitit_local).

Every run goes to a temporary run_root; W&B is disabled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("hydra")

from _support import assert_complete, compose_demo  # noqa: E402

from ndode.experiments import ode_demo  # noqa: E402
from ndode.harness.config import run_name  # noqa: E402
from ndode.harness.record import read_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "ode_demo.py"
pytestmark = pytest.mark.slow


def _env():
    env = dict(os.environ, WANDB_MODE="disabled", HYDRA_FULL_ERROR="0", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    return env


def cli(*args, timeout=240, check=True):
    p = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=timeout)
    out = p.stdout + p.stderr
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}:\n{out}")
    return p.returncode, out


def test_cli_smoke_run_then_sweep_skips_it(tmp_path):
    args = ["solver.method=rk4", "budget=smoke", "seed=3", f"run_root={tmp_path}"]
    _, out = cli(*args)
    run_dir = tmp_path / "ode_demo" / "budget=smoke,solver.method=rk4,seed=3"
    assert_complete(run_dir)
    assert "iter 30/30" in out and "ETA" in out and "nfe_forward" in out  # console progress
    # Hydra writes nothing into a run directory (configs/harness.yaml); meta.json has the overrides, and the job's
    # log file is opened by the harness once it holds the run's lock
    assert not (run_dir / ".hydra").exists()
    assert json.loads((run_dir / "meta.json").read_text())["overrides"] == args
    assert "start:" in (run_dir / "ode_demo.log").read_text()
    stamp = (run_dir / "done").stat().st_mtime_ns
    # the same job in a sweep (basic launcher): same directory, found finished, skipped
    _, out = cli("-m", *args)
    assert "skip:" in out and (run_dir / "done").stat().st_mtime_ns == stamp
    assert not (REPO / "outputs").exists() and not (REPO / "multirun").exists()


def test_cli_bad_override_fails_before_any_work(tmp_path):
    # each bad override is also checked through the compose API in test_harness.py
    code, out = cli("solver.rtoll=1e-3", f"run_root={tmp_path}", check=False)
    assert code != 0 and "rtoll" in out and "Traceback" not in out
    assert not any(tmp_path.iterdir())
    # `+key=value` gets past Hydra (it appends); the harness refuses it and removes Hydra's empty run dir
    code, out = cli("+solver.rtoll=1e-3", f"run_root={tmp_path}", check=False)
    assert code != 0 and "config error: solver.rtoll" in out and "Traceback" not in out
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    over = ["budget=smoke", "budget.steps=100", "budget.refine_steps=1", "budget.checkpoint_every=10",
            "budget.eval_every=50", "budget.log_every=5"]
    killed_root, clean_root = tmp_path / "killed", tmp_path / "clean"
    run_dir = killed_root / "ode_demo" / run_name(",".join(sorted(over[1:])), "smoke", 0)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *over, f"run_root={killed_root}", "quiet=true"],
                            cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run_dir / "checkpoint.pt").exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # mid-way: just after a checkpoint, somewhere in the next interval
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (run_dir / "done").exists() and not (run_dir / "summary.json").exists()
    _, out = cli(*over, f"run_root={killed_root}")
    assert "resume:" in out
    meta = assert_complete(run_dir)
    resumed_from = meta["attempts"][-1]["resumed_from_step"]
    assert len(meta["attempts"]) == 2 and 0 < resumed_from < 100

    # the same run, uninterrupted, in this process (compose API)
    cfg = compose_demo(*over, f"run_root={clean_root}", "quiet=true")
    from ndode.harness import run_experiment

    clean = run_experiment(cfg, ode_demo.ODEDemoTask, run_dir=clean_root / "x")
    resumed = json.loads((run_dir / "summary.json").read_text())
    for s in (clean, resumed):
        s.pop("wall_time_s")
    assert resumed == clean

    def strip(recs):
        return [{k: v for k, v in r.items() if k != "time_s"} for r in recs]

    assert strip(read_jsonl(run_dir / "metrics.jsonl")) == strip(read_jsonl(clean_root / "x" / "metrics.jsonl"))


def test_joblib_sweep(tmp_path):
    _, out = cli("-m", "seed=0,1", "budget=smoke", "budget.steps=10", f"run_root={tmp_path}",
                 "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert "Joblib" in out
    dirs = [tmp_path / "ode_demo" / f"budget=smoke,budget.steps=10,seed={s}" for s in (0, 1)]
    metas = [assert_complete(d) for d in dirs]
    assert metas[0]["attempts"][0]["pid"] != metas[1]["attempts"][0]["pid"]  # separate worker processes


def test_submitit_local_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    _, out = cli("-m", "seed=0", "budget=smoke", "budget.steps=10", f"run_root={tmp_path}",
                 "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", timeout=300)
    assert_complete(tmp_path / "ode_demo" / "budget=smoke,budget.steps=10,seed=0")
    assert list((tmp_path / "ode_demo" / ".submitit").glob("*/*_result.pkl"))  # the job ran under submitit

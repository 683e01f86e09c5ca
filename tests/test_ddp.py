"""Data-parallel MNIST under ``torchrun`` on CPU (gloo): parity with one process, resume after a kill, bad world sizes.

The tests marked ``ddp`` start ``torchrun`` (2 or 3 worker processes); run them alone with ``pytest -m ddp``.
The others check the refusals and the SLURM launcher's defaults without starting any process.
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
import torch

pytest.importorskip("hydra")
from test_mnist_experiment import compose_mnist, data_root, mnist  # noqa: E402,F401 - the fixture is shared

from hydra import compose, initialize_config_dir  # noqa: E402

from ndode.harness import ConfigError, ddp, run_experiment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# log every unit (the first losses are compared one by one), checkpoint every 2, evaluate every 3 of 6 units;
# no augmentation: a rank draws crops for its share of the batch only, so crops differ from a single process's
COMMON = ["budget=smoke", "budget.steps=6", "budget.log_every=1", "budget.checkpoint_every=2", "budget.eval_every=3",
          "data.augment=false", "logger.wandb=false", "quiet=false"]


def _torchrun(nproc: int, overrides: list[str], run_root: Path, popen: bool = False):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "experiments/mnist.py", *overrides, f"run_root={run_root}"]
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _workers(pid: int) -> dict[int, int]:
    """torchrun's worker processes: {rank: pid} (from /proc: children of ``pid`` and their RANK)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != pid:  # the parent's pid
                continue
            env = dict(kv.split("=", 1) for kv in (stat.parent / "environ").read_text().split("\0") if "=" in kv)
        except OSError:
            continue
        out[int(env.get("RANK", -1))] = int(stat.parent.name)
    return out


def _wait_for_checkpoint(proc, run_root: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if list((run_root / "mnist").glob("*/checkpoint.pt")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before the test could interrupt it:\n{proc.stdout.read()[-3000:]}"


def _kill_job(pid: int) -> None:
    """SIGKILL torchrun and its workers (they run in sessions of their own, so the agent's group is not enough)."""
    workers = list(_workers(pid).values())
    for p in [pid, *workers]:  # the agent first: it must not restart the workers
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run_dir(run_root: Path) -> Path:
    dirs = [p for p in (run_root / "mnist").iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def _losses(run_dir: Path) -> list[float]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if r["kind"] == "train"]


def _params(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]


def _two_process(model: str, data_root: Path, run_root: Path) -> Path:
    out = _torchrun(2, [f"model={model}", *COMMON, f"data.root={data_root}"], run_root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 processes (DDP, gloo)" in out.stdout + out.stderr
    return _run_dir(run_root)


@pytest.fixture(scope="module")
def odenet_2p(data_root, tmp_path_factory):
    """One uninterrupted 2-process ODE-Net run (adjoint), shared by the parity and the resume tests."""
    return _two_process("odenet", data_root, tmp_path_factory.mktemp("odenet_2p"))


def _assert_same_training(two: Path, one: Path) -> None:
    a, b = _losses(two), _losses(one)
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    pa, pb = _params(two), _params(one)
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")


@pytest.mark.ddp
@pytest.mark.parametrize("model", ["odenet", "resnet"])
def test_two_processes_match_one(model, odenet_2p, data_root, tmp_path):
    """Same global batch and seed: the same losses unit by unit and the same final parameters as one process.

    For the ODE-Net (adaptive dopri5, adjoint) this needs every rank's error norm to be the global batch's:
    with per-rank norms the ranks take their own steps and the gradients differ from one process's.
    """
    two = odenet_2p if model == "odenet" else _two_process(model, data_root, tmp_path / "two")
    cfg = compose_mnist(f"model={model}", *COMMON, f"data.root={data_root}", f"run_root={tmp_path}")
    run_experiment(cfg, mnist.MNISTTask, run_dir=tmp_path / "one")
    _assert_same_training(two, tmp_path / "one")
    if model == "odenet":
        nfe = lambda d: [(r.get("nfe_forward"), r.get("nfe_backward"))  # noqa: E731
                         for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
        assert nfe(two) == nfe(tmp_path / "one")


@pytest.mark.ddp
def test_killed_run_resumes_and_matches(odenet_2p, data_root, tmp_path):
    """SIGKILL to the whole torchrun job after its first checkpoint; the same command resumes and ends the same."""
    overrides = ["model=odenet", *COMMON, f"data.root={data_root}"]
    proc = _torchrun(2, overrides, tmp_path, popen=True)
    try:
        _wait_for_checkpoint(proc, tmp_path)
        _kill_job(proc.pid)
    finally:
        if proc.poll() is None:
            _kill_job(proc.pid)
        proc.wait()
    run_dir = _run_dir(tmp_path)
    assert not (run_dir / "done").exists() and (run_dir / "checkpoint.pt").exists()
    out = _torchrun(2, overrides, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resume:" in out.stdout + out.stderr
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["attempts"][-1]["resumed_from_step"] in (2, 4)
    assert meta["attempts"][-1]["world_size"] == 2
    a, b = (json.loads((d / "summary.json").read_text()) for d in (run_dir, odenet_2p))
    for k in ("test_error", "test_loss", "train_loss", "train_nfe_forward", "train_nfe_backward"):
        assert a[k] == pytest.approx(b[k], rel=1e-6), k
    _assert_same_training(run_dir, odenet_2p)


@pytest.mark.ddp
def test_signal_to_one_rank_stops_both_after_the_same_unit(data_root, tmp_path):
    """SIGTERM reaches rank 1 alone: the ranks agree after the unit, rank 0 checkpoints it, both stop (no hang)."""
    long = [o if not o.startswith("budget.steps=") else "budget.steps=5000" for o in COMMON]
    proc = _torchrun(2, ["model=mlp", *long, f"data.root={data_root}"], tmp_path, popen=True)
    try:
        _wait_for_checkpoint(proc, tmp_path)
        os.kill(_workers(proc.pid)[1], signal.SIGTERM)
        text, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            _kill_job(proc.pid)
            proc.wait()
    assert proc.returncode != 0
    assert text.count("interrupted: SIGTERM at iter") == 2, text[-3000:]  # both ranks, the same unit
    meta = json.loads((_run_dir(tmp_path) / "meta.json").read_text())
    assert meta["status"] == "interrupted"
    step = meta["attempts"][-1]["interrupted"]["step"]
    ckpt = torch.load(_run_dir(tmp_path) / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == step < 5000
    assert len({line.split("interrupted: SIGTERM at iter ")[1].split("/")[0]
                for line in text.splitlines() if "interrupted: SIGTERM at iter" in line}) == 1


@pytest.mark.ddp
def test_world_size_that_does_not_divide_the_batch(data_root, tmp_path):
    """3 processes for a global batch of 32: every rank says so before training; no run directory is left."""
    out = _torchrun(3, ["model=mlp", "budget=smoke", f"data.root={data_root}", "logger.wandb=false"], tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert text.count("config error: budget.batch_size=32 is the global batch and must split evenly over the 3 "
                      "processes (WORLD_SIZE=3)") == 3, text[-4000:]
    assert "start:" not in text
    assert not [p for p in (tmp_path / "mnist").glob("*")] if (tmp_path / "mnist").exists() else True


# ---- without starting processes
@pytest.fixture
def world_of_two(monkeypatch):
    """This process believes it is rank 0 of 2 (the refusals come before any process group is joined)."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")


def test_single_process_experiment_refuses_torchrun(world_of_two, tmp_path):
    """An experiment whose task does not support DDP (ode_demo here; CNF and latent ODE alike) says so at once."""
    from test_harness import compose_demo, ode_demo

    cfg = compose_demo("budget=smoke", "quiet=true", f"run_root={tmp_path}")
    with pytest.raises(ConfigError, match=r"experiment ode_demo runs single-process .* WORLD_SIZE=2; run it with "
                                          r"python, not torchrun"):
        run_experiment(cfg, ode_demo.ODEDemoTask, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_batch_that_does_not_split_is_refused_before_the_run_directory(world_of_two, data_root, tmp_path):
    cfg = compose_mnist("model=mlp", "budget=smoke", "budget.batch_size=33", "budget.train_subset=66", "quiet=true",
                        f"data.root={data_root}", f"run_root={tmp_path}")
    with pytest.raises(ConfigError, match=r"budget.batch_size=33 is the global batch and must split evenly over the "
                                          r"2 processes \(WORLD_SIZE=2\); use a process count that divides it "
                                          r"\(1, 3, 11, 33\) or a batch size that is a multiple of 2"):
        run_experiment(cfg, mnist.MNISTTask, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_shards_of_a_global_batch_partition_it():
    idx = torch.arange(12)
    parts = [ddp.shard(idx, ddp.DistEnv(r, 3)) for r in range(3)]
    assert torch.equal(torch.cat(parts), idx) and all(len(p) == 4 for p in parts)
    assert ddp.shard(idx, ddp.DistEnv()) is idx


def test_slurm_launcher_gives_one_task_per_gpu():
    """gpus_per_node=4: four tasks (processes) of one run, memory per GPU; the default stays one GPU, one task."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from submitit.slurm.slurm import _make_sbatch_string

    for gpus in (1, 4):
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            launcher = compose("mnist", overrides=["hydra/launcher=slurm", f"hydra.launcher.gpus_per_node={gpus}"],
                               return_hydra_config=True).hydra.launcher
        assert launcher.tasks_per_node == gpus
        script = _make_sbatch_string(command="python x.py", folder="logs", gpus_per_node=launcher.gpus_per_node,
                                     ntasks_per_node=launcher.tasks_per_node,
                                     additional_parameters=dict(launcher.additional_parameters))
        assert f"#SBATCH --ntasks-per-node={gpus}" in script and f"#SBATCH --gpus-per-node={gpus}" in script
        assert "#SBATCH --mem-per-gpu=32G" in script

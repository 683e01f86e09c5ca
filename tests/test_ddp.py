"""Data-parallel MNIST under ``torchrun`` on CPU (gloo): parity with one process, resume after a kill, bad world sizes.

Each test here starts ``torchrun`` (2 or 3 worker processes); run them alone with ``pytest -m ddp``.
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

from ndode.harness import run_experiment  # noqa: E402

pytestmark = pytest.mark.ddp
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


def test_killed_run_resumes_and_matches(odenet_2p, data_root, tmp_path):
    """SIGKILL to the whole torchrun job after its first checkpoint; the same command resumes and ends the same."""
    overrides = ["model=odenet", *COMMON, f"data.root={data_root}"]
    proc = _torchrun(2, overrides, tmp_path, popen=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if list((tmp_path / "mnist").glob("*/checkpoint.pt")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read()[-3000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    run_dir = _run_dir(tmp_path)
    assert not (run_dir / "done").exists()
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


def test_world_size_that_does_not_divide_the_batch(data_root, tmp_path):
    """3 processes for a global batch of 32: every rank says so before training; no run directory is left."""
    out = _torchrun(3, ["model=mlp", "budget=smoke", f"data.root={data_root}", "logger.wandb=false"], tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert text.count("config error: budget.batch_size=32 is the global batch and must split evenly over the 3 "
                      "processes (WORLD_SIZE=3)") == 3, text[-4000:]
    assert "start:" not in text
    assert not [p for p in (tmp_path / "mnist").glob("*")] if (tmp_path / "mnist").exists() else True

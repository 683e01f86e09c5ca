"""Data-parallel training on CPU (gloo): each rank's share of the data, shared error norms, parity with one
process, resume after a kill, bad world sizes.

The tests marked ``ddp`` start processes (``torchrun`` with 2 or 3 workers, or a 2-process gloo job); run them
alone with ``pytest -m ddp``. The others check the refusals and the SLURM launcher's defaults without starting any
process.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

pytest.importorskip("hydra")
import _ddp_solves  # noqa: E402
from _support import compose_demo, compose_mnist  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from ndode.experiments import mnist, ode_demo  # noqa: E402
from ndode.harness import ConfigError, RunContext, ddp, run_experiment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# log every unit (the first losses are compared one by one), checkpoint every 2, evaluate every 3 of 6 units;
# no augmentation: a rank draws crops for its share of the batch only, so crops differ from a single process's
COMMON = ["budget=smoke", "budget.steps=6", "budget.log_every=1", "budget.checkpoint_every=2", "budget.eval_every=3",
          "data.augment=false", "logger.wandb=false", "quiet=false"]


def _torchrun(nproc: int, overrides: list[str], run_root: Path, popen: bool = False, probe: Path | None = None):
    """``torchrun experiments/mnist.py``; with ``probe``, ``tests/_mnist_probe.py`` (the same run, its inputs
    recorded per rank in ``probe``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "NDODE_PROBE"):
        env.pop(k, None)
    if probe is not None:
        env["NDODE_PROBE"] = str(probe)
    script = "tests/_mnist_probe.py" if probe is not None else "experiments/mnist.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           script, *overrides, f"run_root={run_root}"]
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


def _two_process(model: str, data_root: Path, run_root: Path, probe: Path | None = None) -> Path:
    out = _torchrun(2, [f"model={model}", *COMMON, f"data.root={data_root}"], run_root, probe=probe)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 processes (DDP, gloo)" in out.stdout + out.stderr
    return _run_dir(run_root)


def _one_process(model: str, data_root: Path, run_root: Path, probe: Path | None = None) -> Path:
    """The same run in this process (``probe``: with tests/_mnist_probe.py's task, recording into ``probe``)."""
    cfg = compose_mnist(f"model={model}", *COMMON, f"data.root={data_root}", f"run_root={run_root}")
    if probe is None:
        run_experiment(cfg, mnist.MNISTTask, run_dir=run_root / "one")
    else:
        from _mnist_probe import ProbedTask

        with mock.patch.dict(os.environ, {"NDODE_PROBE": str(probe)}):
            run_experiment(cfg, ProbedTask, run_dir=run_root / "one")
    return run_root / "one"


def _probes(probe: Path, world: int) -> list[dict]:
    out = [torch.load(probe / f"rank{r}.pt", weights_only=False) for r in range(world)]
    assert [p["process"] for p in out] == [(r, world) for r in range(world)]
    return out


@pytest.fixture(scope="module")
def odenet_2p(data_root, tmp_path_factory):
    """One uninterrupted 2-process ODE-Net run (adjoint) and what each rank's model was given; shared by the
    shard, parity and resume tests."""
    root = tmp_path_factory.mktemp("odenet_2p")
    return _two_process("odenet", data_root, root, probe=root / "probe"), _probes(root / "probe", 2)


@pytest.fixture(scope="module")
def odenet_1p(data_root, tmp_path_factory):
    """The same run in one process, probed alike."""
    root = tmp_path_factory.mktemp("odenet_1p")
    return _one_process("odenet", data_root, root, probe=root / "probe"), _probes(root / "probe", 1)[0]


def _assert_same_training(two: Path, one: Path, init: dict | None = None) -> None:
    """The same losses unit by unit and the same final parameters. With ``init`` (the parameters both started
    from; a probed float64 run) what training moved each parameter tensor by must agree to 1e-9 of its size:
    unshared error norms move the ODE-Net's by several percent."""
    a, b = _losses(two), _losses(one)
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, rel=1e-5 if init is None else 1e-10, abs=1e-6 if init is None else 0)
    pa, pb = _params(two), _params(one)
    assert pa.keys() == pb.keys()
    for k in pa:
        if init is None:
            torch.testing.assert_close(pa[k], pb[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")
        else:
            moved = pb[k] - init[k]
            assert (pa[k] - pb[k]).norm() <= 1e-9 * moved.norm(), (k, float((pa[k] - pb[k]).norm() / moved.norm()))


def _examples(batches: list[torch.Tensor]) -> list[tuple]:
    """The examples of some batches as a multiset (sorted rows): which images, however split and ordered."""
    return sorted(tuple(x.reshape(-1).tolist()) for b in batches for x in b)


@pytest.mark.ddp
def test_each_rank_trains_and_evaluates_on_its_own_share(odenet_2p, odenet_1p):
    """Each unit, rank r's forward gets the r-th half of the one-process run's global batch (16 of 32 images,
    the halves disjoint); each evaluation, the ranks' test images together are the test set, each once."""
    (_, ranks), (_, one) = odenet_2p, odenet_1p
    assert [p["task_sees"] for p in ranks] == [(0, 2), (1, 2)]  # the task knew each rank's place
    assert sorted(one["train"]) == sorted(ranks[0]["train"]) == sorted(ranks[1]["train"]) == list(range(6))
    for step, batch in one["train"].items():
        shards = [p["train"][step] for p in ranks]
        assert [len(x) for x in shards] == [16, 16] and len(batch) == 32, step
        assert torch.equal(torch.cat(shards), batch), step  # the union, in order: rank 0 the first half
        assert not set(_examples([shards[0]])) & set(_examples([shards[1]])), step  # disjoint
    assert len(one["eval"]) == len(ranks[0]["eval"]) == len(ranks[1]["eval"]) == 2  # at units 3 and 6
    for i, batches in enumerate(one["eval"]):
        per_rank = [p["eval"][i] for p in ranks]
        assert [sum(map(len, b)) for b in per_rank] == [32, 32]  # half of the 64 test images each
        assert _examples(per_rank[0] + per_rank[1]) == _examples(batches)


@pytest.mark.ddp
@pytest.mark.parametrize("model", ["odenet", "resnet"])
def test_two_processes_match_one(model, odenet_2p, odenet_1p, data_root, tmp_path):
    """Same global batch and seed: the same losses unit by unit and the same final parameters as one process,
    each rank having trained on its half of every batch.

    For the ODE-Net (adaptive dopri5, adjoint) this needs every rank's error norm to be the global batch's:
    with per-rank norms the ranks take their own steps and the gradients differ from one process's.
    """
    if model == "odenet":  # probed: in float64 (tests/_mnist_probe.py says why)
        (two, ranks), (one, probe) = odenet_2p, odenet_1p
        _assert_same_training(two, one, init=probe["init"])
        # each rank's own NFE, unit by unit: the one-process run's
        assert ranks[0]["nfe"] == ranks[1]["nfe"] == probe["nfe"] and len(probe["nfe"]) == 6
    else:
        two, one = _two_process(model, data_root, tmp_path / "two"), _one_process(model, data_root, tmp_path)
        _assert_same_training(two, one)


@pytest.mark.ddp
def test_killed_run_resumes_and_matches(odenet_2p, data_root, tmp_path):
    """SIGKILL to the whole torchrun job after its first checkpoint; the same command resumes and ends the same."""
    overrides = ["model=odenet", *COMMON, f"data.root={data_root}"]
    probe = tmp_path / "probe"  # the same (float64) task as odenet_2p's
    proc = _torchrun(2, overrides, tmp_path, popen=True, probe=probe)
    try:
        _wait_for_checkpoint(proc, tmp_path)
        _kill_job(proc.pid)
    finally:
        if proc.poll() is None:
            _kill_job(proc.pid)
        proc.wait()
    run_dir = _run_dir(tmp_path)
    assert not (run_dir / "done").exists() and (run_dir / "checkpoint.pt").exists()
    out = _torchrun(2, overrides, tmp_path, probe=probe)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resume:" in out.stdout + out.stderr
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["attempts"][-1]["resumed_from_step"] in (2, 4)
    assert meta["attempts"][-1]["world_size"] == 2
    a, b = (json.loads((d / "summary.json").read_text()) for d in (run_dir, odenet_2p[0]))
    for k in ("test_error", "test_loss", "train_loss", "train_nfe_forward", "train_nfe_backward"):
        assert a[k] == pytest.approx(b[k], rel=1e-6), k
    _assert_same_training(run_dir, odenet_2p[0], init=odenet_2p[1][0]["init"])


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


# ---- adaptive solves on ranks with different data (a 2-process gloo job, no torchrun: seconds)
@pytest.fixture(scope="module")
def solves_2p():
    """tests/_ddp_solves.py's worker on 2 ranks: {rank: results}."""
    import torch.multiprocessing as mp

    with socket.socket() as sock:  # a free port for the job's rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_ddp_solves.worker, args=(r, 2, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        res = dict(q.get(timeout=300) for _ in procs)
    except queue.Empty:
        pytest.fail("the 2-process solver job did not answer within 300 s (a rank waits in a collective)")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    for r, out in res.items():
        assert "error" not in out, f"rank {r}:\n{out['error']}"
    return res


@pytest.mark.ddp
@pytest.mark.parametrize("adjoint", _ddp_solves.ADJOINTS)
def test_odenet_ranks_with_different_data_take_the_one_process_steps(solves_2p, adjoint):
    """A tensor-state ODE-Net, each rank on its own shard, under the harness's ``synced_error_norms``: every
    rank's forward (and backsolve) NFE is the one-process run's on the whole batch, and so are the gradients
    DDP averages. The control: without it the ranks' NFE differ (the shards really ask for other steps)."""
    mine = {r: solves_2p[r][adjoint, True] for r in (0, 1)}
    own = {r: solves_2p[r][adjoint, False] for r in (0, 1)}
    model = _ddp_solves.odenet(adjoint)
    one = _ddp_solves.odenet_step(model, model, _ddp_solves.batch([0, 1]))
    assert own[0]["nfe"][0] != own[1]["nfe"][0], own  # the control: unsynced, the forward solves differ
    assert mine[0]["nfe"] == mine[1]["nfe"] == one["nfe"]
    for r in (0, 1):
        torch.testing.assert_close(torch.tensor(mine[r]["grad"], dtype=torch.float64), one["grad"])
        assert mine[r]["after"] is None  # the block solves on its own again after the training step


@pytest.mark.ddp
def test_tuple_state_ranks_share_the_error_norm(solves_2p):
    """``solve(..., norm_reduce=ddp.norm_reduce(denv))`` with a tuple state: forward and backsolve NFE alike on
    every rank and equal to one process's on the whole batch (without it: different)."""
    one = _ddp_solves.tuple_solve(_ddp_solves.batch([0, 1]))
    own = [solves_2p[r]["tuple", False]["nfe"] for r in (0, 1)]
    assert own[0] != own[1]
    assert solves_2p[0]["tuple", True]["nfe"] == solves_2p[1]["tuple", True]["nfe"] == one["nfe"]


@pytest.mark.ddp
def test_a_one_process_dist_env_is_refused_inside_a_job(solves_2p):
    for r in (0, 1):
        assert solves_2p[r]["lone"] == (f"DistEnv(rank=0, world=1, local_rank=0) disagrees with the process group "
                                         f"this process joined (rank {r} of 2); use the DistEnv the harness built "
                                         "(RunContext.dist)")


# ---- without starting processes
@pytest.fixture
def world_of_two(monkeypatch):
    """This process believes it is rank 0 of 2 (the refusals come before any process group is joined)."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")


def test_single_process_experiment_refuses_torchrun(world_of_two, tmp_path):
    """An experiment whose task does not support DDP (ode_demo here; CNF and latent ODE alike) says so at once."""
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
    assert ddp.shard(idx, ddp.DistEnv(0, 1)) is idx


def test_rank_and_world_have_no_default(data_root, tmp_path):
    """The task learns its place from the harness's DistEnv alone: none, or something else, fails at once."""
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'dist'"):
        RunContext(tmp_path, torch.device("cpu"), 0)
    with pytest.raises(TypeError, match=r"RunContext.dist must be the run's ddp.DistEnv \(ndode.harness.ddp.env\(\)\), "
                                        "got None"):
        RunContext(tmp_path, torch.device("cpu"), 0, None)
    with pytest.raises(TypeError, match="missing 2 required positional arguments: 'rank' and 'world'"):
        ddp.DistEnv()
    with pytest.raises(ValueError, match=r"DistEnv\(rank=2, world=2, local_rank=0\): need world >= 1, "
                                         "0 <= rank < world"):
        ddp.DistEnv(2, 2)
    cfg = compose_mnist("model=mlp", "budget=smoke", "quiet=true", f"data.root={data_root}", f"run_root={tmp_path}")
    with pytest.raises(AttributeError, match="dist"):  # a data-parallel task cannot be built without it
        mnist.MNISTTask(cfg, SimpleNamespace(run_dir=tmp_path, device=torch.device("cpu"), seed=0))


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

"""Runs that survive real faults: bad values, concurrent launches, SIGTERM, corrupt checkpoints, NaN, full disks.

Most runs go through Hydra's compose API and ``run_experiment`` (the ``ode_demo``
experiment at a shortened smoke budget); three tests start the command line
(a bad value, a second launch of a running run, SIGTERM), the paths that only
a real process has.
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("hydra")
from _support import CONFIGS, compose_demo, compose_mnist, smoke  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.errors import ConfigCompositionException  # noqa: E402

from ndode.experiments import cnf, latent_ode, latent_poisson, mnist, ode_demo  # noqa: E402
from ndode.harness import ConfigError, RunRecord, load_runs, run_experiment  # noqa: E402
from ndode.harness.config import Range, run_name, validate  # noqa: E402
from ndode.harness.loop import CheckpointError, NonFiniteError, RunInterrupted  # noqa: E402
from ndode.harness.record import RecordWriteError, RunLockedError, atomic_write_text, read_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "ode_demo.py"
# a short run with checkpoints every 10 units, a log record every 5 and two evaluations
RUN = ["budget=smoke", "budget.steps=40", "budget.refine_steps=1", "budget.checkpoint_every=10",
       "budget.eval_every=20", "budget.log_every=5"]


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _strip(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "wall_time_s"}


def _metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in read_jsonl(run_dir / "metrics.jsonl")]


def _meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta.json").read_text())


class _Demo(ode_demo.ODEDemoTask):
    """The demo without its figure (matplotlib is the slowest part of a short run, and no fault touches it)."""

    def make_figures(self, run_dir):
        pass


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The uninterrupted run every fault test is compared with: (summary, metric records)."""
    root = tmp_path_factory.mktemp("clean")
    cfg = compose_demo(*RUN, f"run_root={root}", "quiet=true")
    summary = run_experiment(cfg, _Demo, run_dir=root / "run")
    return _strip(summary), _metrics(root / "run")


def _run(tmp_path, task=None, *extra):
    cfg, run_dir = smoke(tmp_path, *RUN[1:], *extra)
    return run_experiment(cfg, task or _Demo, run_dir=run_dir), run_dir


def _run_dir(tmp_path, *extra) -> Path:
    return smoke(tmp_path, *RUN[1:], *extra)[1]


# ------------------------------------------------------------------ bad values: one mechanism, messages, nothing left



BAD_DEMO = [  # (override, words the message must hold)
    ("model.hidden=0", ["model.hidden=0", ">= 1"]),
    ("model.hidden=-3", ["model.hidden=-3", ">= 1"]),
    ("data.n_times=1", ["data.n_times=1", ">= 2"]),
    ("data.t_end=0", ["data.t_end=0", "> 0"]),
    ("data.t_end=-5", ["data.t_end=-5", "> 0"]),
    ("data.noise_std=-0.1", ["data.noise_std=-0.1", ">= 0"]),
    ("data.heldout_every=1", ["data.heldout_every=1", ">= 2"]),
    ("optim.lr=0", ["optim.lr=0", "> 0"]),
    ("optim.lr=-0.001", ["optim.lr=-0.001", "> 0"]),
    ("optim.lr=inf", ["optim.lr=inf", "finite"]),
    ("optim.refine_warmup=1.5", ["optim.refine_warmup=1.5", "[0, 1]"]),
    ("optim.refine_warmup=-0.1", ["optim.refine_warmup=-0.1", "[0, 1]"]),
    ("budget.steps=0", ["budget.steps=0", ">= 1"]),
    ("budget.batch_size=0", ["budget.batch_size=0", ">= 1"]),
    ("budget.batch_time=1", ["budget.batch_time=1", ">= 2"]),
    ("budget.refine_max_iter=0", ["budget.refine_max_iter=0", ">= 1"]),
    ("budget.refine_steps=-1", ["budget.refine_steps=-1", ">= 0"]),
    ("budget.refine_steps=30", ["budget.refine_steps=30", "budget.steps=30"]),
    ("budget.log_every=0", ["budget.log_every=0", ">= 1"]),
    ("budget.eval_every=-1", ["budget.eval_every=-1", ">= 0"]),
    ("budget.checkpoint_every=-2", ["budget.checkpoint_every=-2", ">= 0"]),
    ("budget.progress_every=-1", ["budget.progress_every=-1", ">= 0"]),
    ("solver.rtol=2", ["solver.rtol=2", "[0, 1]"]),
    ("solver.rtol=nan", ["solver.rtol=nan", "finite"]),
    ("solver.atol=-1e-6", ["solver.atol=-1e-06", ">= 0"]),
    ("solver.rtol=0 solver.atol=0", ["solver.rtol", "solver.atol", "both 0"]),
    ("solver.method=rk4 solver.step_size=0", ["solver.step_size=0", "> 0"]),
    ("solver.max_num_steps=0", ["solver.max_num_steps=0", ">= 1"]),
    ("seed=-1", ["seed=-1", ">= 0"]),
    ("threads=0", ["threads=0", ">= 1"]),
    ("nonfinite_skips=-1", ["nonfinite_skips=-1", ">= 0"]),
    ("device=tpu", ["device='tpu'", "auto"]),
    ("budget.unit=week", ["budget.unit='week'", "epoch"]),
    ("logger.mode=loud", ["logger.mode='loud'", "offline"]),
]


@pytest.mark.parametrize("override, words", BAD_DEMO, ids=[o for o, _ in BAD_DEMO])
def test_bad_value_is_refused_naming_option_and_range(tmp_path, override, words):
    cfg, run_dir = smoke(tmp_path, *override.split())
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, ode_demo.ODEDemoTask, run_dir=run_dir)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    assert not _files(tmp_path) and not run_dir.exists()


BAD_MNIST = [
    ("model.dim=0", ["model.dim=0", ">= 1"]),
    ("model.n_blocks=0", ["model.n_blocks=0", ">= 1"]),
    ("budget.momentum=1.0", ["budget.momentum=1.0", "[0, 1)"]),
    ("budget.weight_decay=-0.1", ["budget.weight_decay=-0.1", ">= 0"]),
    ("budget.fig3_tols=[0.1,0]", ["budget.fig3_tols=[0.1, 0.0]", "every element", "(0, 1]"]),
    ("budget.lr_milestones=[-1]", ["budget.lr_milestones=[-1.0]", ">= 0"]),
    ("budget.test_subset=0", ["budget.test_subset=0", ">= 1"]),
    ("budget.warmup_epochs=-1", ["budget.warmup_epochs=-1", ">= 0"]),
    ("data.workers=-1", ["data.workers=-1", ">= 0"]),
    ("budget.train_subset=16", ["budget.train_subset=16", "budget.batch_size=32"]),
]


@pytest.mark.parametrize("override, words", BAD_MNIST, ids=[o for o, _ in BAD_MNIST])
def test_bad_mnist_value_is_refused(tmp_path, override, words):
    cfg = compose_mnist("budget=smoke", "quiet=true", f"run_root={tmp_path}", override)
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, mnist.MNISTTask, run_dir=tmp_path / "mnist" / "run")
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    assert not _files(tmp_path)


@pytest.mark.parametrize("override, words", [
    ("model.hidden=fifty", ["hidden", "fifty"]),
    ("budget.steps=1.5", ["steps", "1.5"]),
    ("nonfinite_skips=some", ["nonfinite_skips", "some"]),
])
def test_wrong_type_fails_while_composing(override, words):
    with pytest.raises(ConfigCompositionException) as err:
        compose_demo(override)
    msg = str(err.value) + str(err.value.__cause__)
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("schema", ["ode_demo", "mnist", "cnf", "latent_ode", "latent_poisson"])
def test_every_numeric_option_has_a_range(schema):
    """Every int/float option of an experiment's schema is declared with ``ranged`` (new experiments: add them)."""
    import dataclasses
    import typing

    cls = {"ode_demo": ode_demo.ODEDemoConfig, "mnist": mnist.MNISTConfig,
           "cnf": cnf.CNFConfig, "latent_ode": latent_ode.LatentODEConfig,
           "latent_poisson": latent_poisson.LatentPoissonConfig}[schema]
    missing = []

    def walk(c, path):
        hints = typing.get_type_hints(c)
        for f in dataclasses.fields(c):
            t = hints[f.name]
            args = [a for a in typing.get_args(t) if a is not type(None)]
            base = args[0] if typing.get_origin(t) in (typing.Union, list, typing.List) and args else t
            if dataclasses.is_dataclass(base):
                walk(base, f"{path}{f.name}.")
            elif base in (int, float) and "range" not in f.metadata:
                missing.append(path + f.name)

    walk(cls, "")
    assert not missing, f"numeric options without a range: {missing}"


def test_range_descriptions():
    assert str(Range(ge=1)) == ">= 1" and str(Range(gt=0)) == "> 0"
    assert str(Range(ge=0, le=1)) == "in [0, 1]" and str(Range(ge=0, lt=1)) == "in [0, 1)"
    assert Range(gt=0).contains(1e-9) and not Range(gt=0).contains(0) and not Range().contains(float("nan"))
    assert not Range(ge=0).contains(True)  # a bool is not a number here


def test_run_dir_required_outside_hydra():
    from ndode.harness import RunRecordError

    cfg = compose_demo("budget=smoke", "quiet=true")
    with pytest.raises(RunRecordError, match="run_dir"):
        run_experiment(cfg, ode_demo.ODEDemoTask)


def test_refused_task_leaves_no_directory(tmp_path):
    """MNIST with its data missing and preparation off: a clear error, and no half-made run directory."""
    from ndode.data.mnist import MNISTPrepareError

    root = tmp_path / "runs"
    cfg = compose_mnist("budget=smoke", "quiet=true", f"run_root={root}", f"data.root={tmp_path / 'nodata'}",
                        "data.prepare=false")
    with pytest.raises(MNISTPrepareError):
        run_experiment(cfg, mnist.MNISTTask, run_dir=root / "mnist" / "run")
    assert not root.exists()


def test_task_error_after_start_is_recorded_not_removed(tmp_path):
    class Broken(_Demo):
        def train_step(self, step):
            if step == 12:
                raise ValueError("a bug in the task")
            return super().train_step(step)

    with pytest.raises(ValueError):
        _run(tmp_path, Broken)
    meta = _meta(_run_dir(tmp_path))
    assert meta["status"] == "failed" and "ValueError: a bug in the task" in meta["reason"]
    assert meta["attempts"][-1]["failed_at_step"] == 13


@pytest.mark.slow
def test_cli_bad_value_exits_with_message_and_leaves_nothing(tmp_path):
    p = subprocess.run([sys.executable, str(SCRIPT), "model.hidden=0", "budget=smoke", f"run_root={tmp_path}"],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    out = p.stdout + p.stderr
    assert p.returncode == 1 and "config error: model.hidden=0 must be >= 1" in out, out
    assert "Traceback" not in out and not _files(tmp_path)


# ------------------------------------------------------------------ one process per run directory


def test_second_process_is_refused_naming_the_holder(tmp_path):
    run_dir = _run_dir(tmp_path)
    run_dir.mkdir(parents=True)
    holder = RunRecord(run_dir)
    holder.lock()
    try:
        cfg, _ = smoke(tmp_path, *RUN[1:])
        with pytest.raises(RunLockedError) as err:
            run_experiment(cfg, ode_demo.ODEDemoTask, run_dir=run_dir)
        assert f"host {platform.node()} pid {os.getpid()}" in str(err.value)
        assert [p.name for p in run_dir.iterdir()] == [".lock"]  # the refused one touched nothing
    finally:
        holder.unlock()
    again = RunRecord(run_dir)
    again.lock()  # released: the next process gets it
    assert f"pid {os.getpid()}" in (run_dir / ".lock").read_text()
    again.unlock()


def test_lock_of_a_dead_process_never_blocks(tmp_path):
    pid = os.fork()
    if pid == 0:  # the child takes the lock and dies without releasing it
        try:
            RunRecord(tmp_path).lock()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert f"pid {pid} " in (tmp_path / ".lock").read_text()
    record = RunRecord(tmp_path)
    record.lock()  # the OS released it with the process
    assert f"pid {os.getpid()} " in (tmp_path / ".lock").read_text()
    record.unlock()


def _env():
    env = dict(os.environ, WANDB_MODE="disabled", HYDRA_FULL_ERROR="0", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    return env


def _wait_for(path: Path, proc, what: str, text: str | None = None, timeout: float = 120):
    deadline = time.time() + timeout
    while not (path.exists() and (text is None or text in path.read_text())):
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


@pytest.mark.slow
def test_concurrent_launches_only_one_runs(tmp_path):
    over = ["budget=smoke", "budget.steps=100000", "budget.checkpoint_every=10", "quiet=true", f"run_root={tmp_path}"]
    run_dir = tmp_path / "ode_demo" / run_name("budget.checkpoint_every=10,budget.steps=100000", "smoke", 0)
    first = subprocess.Popen([sys.executable, str(SCRIPT), *over], cwd=REPO, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    def stable():  # what the running process is not writing now: the refused one must not write it either
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in _files(run_dir)
                if not p.name.startswith(("metrics", "checkpoint", ".checkpoint"))}

    try:
        _wait_for(run_dir / "checkpoint.pt", first, "a checkpoint")
        before = stable()
        second = subprocess.run([sys.executable, str(SCRIPT), *over], cwd=REPO, env=_env(), capture_output=True,
                                text=True, timeout=240)
        out = second.stdout + second.stderr
        assert second.returncode == 1, out
        assert f"already being run by another process (host {platform.node()} pid {first.pid} " in out, out
        assert "Traceback" not in out
        assert first.poll() is None  # the first one is still running
        assert stable() == before  # Hydra's .hydra/*.yaml and job log of the live run untouched too
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM
    meta = _meta(run_dir)
    assert len(meta["attempts"]) == 1 and meta["attempts"][0]["pid"] == first.pid
    steps = [(r["step"], r["kind"]) for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert len(steps) == len(set(steps))  # every record once


# ------------------------------------------------------------------ preemption: SIGTERM / SIGINT


@pytest.mark.slow
def test_sigterm_checkpoints_and_rerun_matches_uninterrupted(tmp_path, clean):
    over = RUN + [f"run_root={tmp_path}", "quiet=true"]
    run_dir = tmp_path / "ode_demo" / run_name(",".join(sorted(RUN[1:])), "smoke", 0)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *over], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(run_dir / "checkpoint.pt", proc, "a checkpoint")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "interrupted: SIGTERM at iter" in out and "run the same command again to resume" in out, out
    meta = _meta(run_dir)
    stopped = meta["attempts"][-1]["interrupted"]
    assert meta["status"] == "interrupted" and stopped["signal"] == "SIGTERM" and 10 <= stopped["step"] < 40
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == stopped["step"]
    assert not (run_dir / "done").exists()

    cfg = compose_demo(*over)
    resumed = run_experiment(cfg, _Demo, run_dir=run_dir)
    assert _meta(run_dir)["attempts"][-1]["resumed_from_step"] == stopped["step"]
    assert _strip(resumed) == clean[0] and _metrics(run_dir) == clean[1]
    assert _meta(run_dir)["status"] == "done"


class _Signalled(_Demo):
    """Sends itself a signal during unit ``AT`` (as SLURM or Ctrl-C would)."""

    AT, SIG = 14, signal.SIGTERM

    def train_step(self, step):
        if step == self.AT:
            os.kill(os.getpid(), self.SIG)
        return super().train_step(step)


class _CtrlC(_Signalled):
    SIG = signal.SIGINT


@pytest.mark.parametrize("task", [_Signalled, _CtrlC], ids=["SIGTERM", "SIGINT"])
@pytest.mark.slow
def test_signal_in_process_finishes_the_unit_and_resumes_exactly(tmp_path, clean, task):
    before = signal.getsignal(task.SIG)
    with pytest.raises(RunInterrupted) as err:
        _run(tmp_path, task)
    name = signal.Signals(task.SIG).name
    assert f"{name} at iter 15/40" in str(err.value) and "run the same command again to resume" in str(err.value)
    assert signal.getsignal(task.SIG) == before  # the harness's handler is gone after the run
    run_dir = _run_dir(tmp_path)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 15
    assert torch.load(run_dir / "checkpoint.prev.pt", weights_only=False)["step"] == 10
    summary, _ = _run(tmp_path)
    assert _strip(summary) == clean[0] and _metrics(run_dir) == clean[1]


class _SlurmWarning(_Signalled):
    SIG = signal.SIGUSR2


@pytest.mark.slow
def test_sigusr2_checkpoints_then_hands_over_to_the_launchers_handler(tmp_path, clean):
    """SLURM's --signal=USR2 ahead of a time limit or preemption: checkpoint first, then submitit's requeue."""
    calls = []

    def requeue(signum, frame):  # what submitit installs: requeue the job, then exit
        calls.append((signum, torch.load(_run_dir(tmp_path) / "checkpoint.pt", weights_only=False)["step"]))
        raise SystemExit(-1)

    before = signal.signal(signal.SIGUSR2, requeue)
    try:
        with pytest.raises(SystemExit):
            _run(tmp_path, _SlurmWarning)
        assert signal.getsignal(signal.SIGUSR2) is requeue
    finally:
        signal.signal(signal.SIGUSR2, before)
    assert calls == [(signal.SIGUSR2, 15)]  # called once, after the checkpoint of the unit it interrupted
    meta = _meta(_run_dir(tmp_path))
    assert meta["status"] == "interrupted" and meta["attempts"][-1]["interrupted"]["signal"] == "SIGUSR2"
    summary, _ = _run(tmp_path)  # the requeued job: the same command
    assert _strip(summary) == clean[0]


# ------------------------------------------------------------------ corrupt checkpoints


@pytest.mark.slow
def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, clean, caplog):
    with pytest.raises(RunInterrupted):
        _run(tmp_path, _Signalled)
    run_dir = _run_dir(tmp_path)
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # a write cut short
    with caplog.at_level("WARNING", logger="ndode.harness"):
        summary, _ = _run(tmp_path)
    assert f"cannot read {ckpt}" in caplog.text and "falling back to the previous checkpoint" in caplog.text
    assert "fell back to checkpoint.prev.pt (iter 10)" in caplog.text
    attempt = _meta(run_dir)["attempts"][-1]
    assert attempt["resumed_from_step"] == 10 and attempt["resumed_from_file"] == "checkpoint.prev.pt"
    assert attempt["checkpoint_fallback"][0]["file"] == "checkpoint.pt"
    assert attempt["checkpoint_fallback"][0]["error"]  # the reason torch gave
    assert (run_dir / "checkpoint.pt.unreadable").exists()
    assert _strip(summary) == clean[0] and _metrics(run_dir) == clean[1]


def test_no_readable_checkpoint_says_how_to_start_over(tmp_path):
    with pytest.raises(RunInterrupted):
        _run(tmp_path, _Signalled)
    run_dir = _run_dir(tmp_path)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run_dir / name).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        _run(tmp_path)
    msg = str(err.value)
    assert "checkpoint.pt:" in msg and "checkpoint.prev.pt:" in msg and f"rm -r '{run_dir}'" in msg
    assert run_dir.exists() and (run_dir / "metrics.jsonl").exists()  # an earlier attempt's record is never removed


# ------------------------------------------------------------------ non-finite values


class _NaNLoss(_Demo):
    """The model blows up in unit 23: NaN parameters and a NaN loss."""

    AT = 23

    def train_step(self, step):
        out = super().train_step(step)
        if step == self.AT:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))
            out["loss"] = float("nan")
        return out


def test_nan_loss_stops_the_run_and_keeps_the_checkpoint(tmp_path):
    with pytest.raises(NonFiniteError) as err:
        _run(tmp_path, _NaNLoss)
    msg = str(err.value)
    assert "non-finite training metric at iter 24/40: loss=nan" in msg
    assert "last NFE: nfe_forward" in msg and "last good checkpoint (iter 20)" in msg and "nonfinite_skips" in msg
    run_dir = _run_dir(tmp_path)
    meta = _meta(run_dir)
    assert meta["status"] == "failed" and "loss=nan" in meta["reason"] and meta["attempts"][-1]["failed_at_step"] == 24
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 20 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (run_dir / "done").exists() and not (run_dir / "summary.json").exists()
    # the collector shows it; tables leave it out
    runs = load_runs(tmp_path, finished_only=False)
    assert list(runs["status"]) == ["failed"] and "loss=nan" in runs["reason"][0]
    assert load_runs(tmp_path).empty


@pytest.mark.slow
def test_nonfinite_skips_undoes_the_unit(tmp_path):
    """The failed run, rerun with nonfinite_skips=2: it resumes from its last good checkpoint and skips the unit."""
    with pytest.raises(NonFiniteError):
        _run(tmp_path, _NaNLoss)
    summary, run_dir = _run(tmp_path, _NaNLoss, "nonfinite_skips=2")
    assert run_dir == _run_dir(tmp_path)  # the same run: nonfinite_skips is not part of the name
    assert _meta(run_dir)["attempts"][-1]["resumed_from_step"] == 20
    assert summary["skipped_steps"] == 1 and math.isfinite(summary["mse_heldout"])
    assert all(torch.isfinite(p).all() for p in torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"].values())
    skips = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "skip"]
    assert [(r["step"], r["nonfinite"]) for r in skips] == [(24, "loss")]
    assert _meta(run_dir)["status"] == "done"


def test_nonfinite_goal_metric_stops_the_run(tmp_path):
    class NaNEval(_Demo):
        def evaluate(self):
            return {**super().evaluate(), "mse_heldout": float("inf")}

    with pytest.raises(NonFiniteError, match=r"goal metric at the evaluation after iter 20/40: mse_heldout=inf"):
        _run(tmp_path, NaNEval)
    assert _meta(_run_dir(tmp_path))["status"] == "failed"


@pytest.mark.slow
def test_tables_leave_failed_runs_out_and_say_so(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_tables
    finally:
        sys.path.remove(str(REPO / "scripts"))
    root = tmp_path / "runs"
    _run(root)
    with pytest.raises(NonFiniteError):
        _run(root, _NaNLoss, "seed=1")
    assert make_tables.main(["--runs", str(root), "--out", str(tmp_path / "out"), "--experiment", "ode_demo"]) == 0
    out = capsys.readouterr()
    assert "ode_demo (budget smoke): 1 runs" in out.out and "left out 1 failed run" in out.out + out.err
    assert "Left out 1 failed run" in (tmp_path / "out" / "tables" / "ode_demo.md").read_text()


# ------------------------------------------------------------------ full disks


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_enospc_during_record_write_keeps_previous_files(tmp_path, monkeypatch):
    record = RunRecord(tmp_path)
    record.write_summary({"a": 1})
    record.write_config({"x": 1})
    monkeypatch.setattr("ndode.harness.record.os.fsync", _enospc)  # the data never reached the disk
    for write, name in ((lambda: record.write_summary({"a": 2}), "summary.json"),
                        (lambda: record.write_config({"x": 2}), "config.yaml")):
        with pytest.raises(RecordWriteError) as err:
            write()
        assert str(tmp_path / name) in str(err.value) and "No space left on device" in str(err.value)
        assert isinstance(err.value, OSError)
    assert record.read_summary() == {"a": 1} and record.read_config() == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "summary.json"]  # no temporary files


@pytest.mark.slow
def test_enospc_while_checkpointing_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, clean):
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:  # the second checkpoint: half written, then the disk is full
            Path(f).write_bytes(b"PK\x03\x04 half")
            raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(RecordWriteError) as err:
        _run(tmp_path)
    run_dir = _run_dir(tmp_path)
    assert f"could not write {run_dir / 'checkpoint.pt'}" in str(err.value)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 10
    assert not list(run_dir.glob(".*tmp*"))
    meta = _meta(run_dir)
    assert meta["status"] == "failed" and "checkpoint.pt" in meta["reason"]
    monkeypatch.setattr(torch, "save", real_save)  # space freed: the same command resumes
    summary, _ = _run(tmp_path)
    assert _strip(summary) == clean[0] and _metrics(run_dir) == clean[1]


def test_enospc_appending_metrics_names_the_file(tmp_path):
    record = RunRecord(tmp_path)
    record.append_metrics({"step": 1})

    class Full:
        def write(self, s):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

        def close(self):
            pass

    record.close()
    record._metrics_fh = Full()
    with pytest.raises(RecordWriteError, match="metrics.jsonl: No space left on device.*free some space"):
        record.append_metrics({"step": 2})
    record.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1}]


def test_atomic_write_text_names_the_file_on_any_os_error(tmp_path, monkeypatch):
    target = tmp_path / "meta.json"
    atomic_write_text(target, "{}")
    monkeypatch.setattr("ndode.harness.record.os.replace", lambda *a: (_ for _ in ()).throw(PermissionError(
        errno.EACCES, "Permission denied")))
    with pytest.raises(RecordWriteError, match="meta.json: Permission denied"):
        atomic_write_text(target, '{"a": 1}')
    assert target.read_text() == "{}"


def test_validate_accepts_dataclass_configs():
    cfg = validate(compose_demo("budget=smoke"))
    assert cfg.model.hidden == 50 and validate(cfg) is cfg


def test_slurm_launcher_requeues_on_preemption_and_time_out():
    """The SLURM job script asks for the warning signal the harness checkpoints on, and for requeueing."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from submitit.slurm.slurm import _make_sbatch_string

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        launcher = compose("ode_demo", overrides=["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher
    assert launcher.max_num_timeout >= 1
    script = _make_sbatch_string(command="python x.py", folder="logs", signal_delay_s=launcher.signal_delay_s,
                                 additional_parameters=dict(launcher.additional_parameters))
    assert "#SBATCH --requeue" in script and f"#SBATCH --signal=USR2@{launcher.signal_delay_s}" in script
    from ndode.harness.loop import STOP_SIGNALS

    assert signal.SIGUSR2 in STOP_SIGNALS and signal.SIGTERM in STOP_SIGNALS


# ------------------------------------------------------------------ a run directory holds one run (issue 30)


def _snapshot(run_dir: Path) -> dict:
    """Every file of a run directory and its bytes (the lock file aside: a refused process opens it)."""
    return {p.relative_to(run_dir): p.read_bytes() for p in _files(run_dir) if p.name != ".lock"}


def _interrupted(tmp_path, *extra) -> Path:
    """A run stopped by SIGTERM at iter 15 (checkpoints at 10 and 15, metrics to 15)."""
    with pytest.raises(RunInterrupted):
        _run(tmp_path, _Signalled, *extra)
    return _run_dir(tmp_path, *extra)


@pytest.mark.slow
def test_checkpoint_of_another_seed_is_refused(tmp_path):
    """The issue's case: seed 1's checkpoint copied into seed 0's directory is not resumed from."""
    from ndode.harness import RunRecordError

    mine, theirs = _interrupted(tmp_path), _interrupted(tmp_path, "seed=1")
    (mine / "checkpoint.pt").write_bytes((theirs / "checkpoint.pt").read_bytes())
    before = _snapshot(mine)
    with pytest.raises(RunRecordError) as err:
        _run(tmp_path)
    msg = str(err.value)
    assert f"{mine / 'checkpoint.pt'} is another run's checkpoint" in msg and "seed: 1 there, 0 here" in msg
    assert "mv " in msg and "rm -r" in msg  # what to do
    assert _snapshot(mine) == before  # nothing rewritten, truncated or renamed


@pytest.mark.slow
def test_checkpoint_ahead_of_the_metrics_is_refused(tmp_path):
    """A checkpoint of the same config but of another run directory, further on than this one's metrics."""
    from ndode.harness import RunRecordError

    done_dir = _run(tmp_path / "a")[1]  # finished: its last checkpoint is at iter 40
    mine = _interrupted(tmp_path / "b")  # metrics to iter 15
    (mine / "checkpoint.pt").write_bytes((done_dir / "checkpoint.pt").read_bytes())
    before = _snapshot(mine)
    with pytest.raises(RunRecordError, match=r"checkpoint.pt is at iter 40, but .*metrics.jsonl ends at iter 15"):
        _run(tmp_path / "b")
    assert _snapshot(mine) == before


@pytest.mark.slow
def test_checkpoint_from_before_the_identity_check_still_resumes(tmp_path, clean):
    """Checkpoints written before they carried their run's identity resume as before (config.yaml was compared),
    unless they are further on than one logging interval past the metrics."""
    from ndode.harness import RunRecordError

    run_dir = _interrupted(tmp_path)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        ckpt = torch.load(run_dir / name, weights_only=False)
        del ckpt["identity"], ckpt["metrics_step"]
        torch.save(ckpt, run_dir / name)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("".join(f"{x}\n" for x in lines if json.loads(x)["step"] <= 5))
    with pytest.raises(RunRecordError, match="ends at iter 5"):  # 15 > 5 + log_every
        _run(tmp_path)
    (run_dir / "metrics.jsonl").write_text("".join(f"{x}\n" for x in lines))
    summary, _ = _run(tmp_path)
    assert _strip(summary) == clean[0] and _metrics(run_dir) == clean[1]


@pytest.mark.slow
def test_meta_of_another_run_is_refused(tmp_path):
    from ndode.harness import RunRecordError

    mine, theirs = _interrupted(tmp_path), _interrupted(tmp_path, "seed=1")
    (mine / "meta.json").write_bytes((theirs / "meta.json").read_bytes())
    before = _snapshot(mine)
    with pytest.raises(RunRecordError, match=rf"{mine / 'meta.json'} is another run's record .*rm -r"):
        _run(tmp_path)
    assert _snapshot(mine) == before


@pytest.mark.parametrize("name, text", [("config.yaml", "experiment: [ode_demo\n"), ("meta.json", '{"status": "runn'),
                                        ("meta.json", "[1, 2]")])
def test_corrupt_record_is_refused_before_anything_changes(tmp_path, name, text):
    """Before, meta.json was parsed after metrics.jsonl had been truncated and config.yaml rewritten."""
    from ndode.harness import RunRecordError

    run_dir = _interrupted(tmp_path)
    (run_dir / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text() + '{"step": 17, "kind": "tr')
    (run_dir / name).write_text(text)
    before = _snapshot(run_dir)
    with pytest.raises(RunRecordError) as err:
        _run(tmp_path)
    msg = str(err.value)
    assert f"{run_dir / name} cannot be read" in msg and "Restore the file" in msg and f"rm -r '{run_dir}'" in msg
    assert _snapshot(run_dir) == before


@pytest.mark.slow
def test_corrupt_metrics_line_is_reported_not_dropped_silently(tmp_path, caplog, clean):
    run_dir = _interrupted(tmp_path)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10] + "\x00garbage"  # a bad block in the middle
    (run_dir / "metrics.jsonl").write_text("".join(f"{x}\n" for x in lines) + '{"step": 16, "ki')  # and a torn end
    with caplog.at_level("WARNING", logger="ndode.harness"):
        _run(tmp_path)
    warned = [r.message for r in caplog.records if "metrics.jsonl" in r.message]
    assert len(warned) == 1 and f"{run_dir / 'metrics.jsonl'}: line 2 is not a JSON record" in warned[0], warned
    assert _meta(run_dir)["attempts"][-1]["metrics_corrupt_lines"] == [2]  # the torn last line is normal: not listed


# ------------------------------------------------------------------ faults on the record path: a message, no traceback


@pytest.mark.parametrize("where", ["file", "under_a_file", "proc", "read_only"])
@pytest.mark.slow
def test_bad_run_root_is_an_error_line(tmp_path, where):
    if where == "read_only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    (tmp_path / "file").write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    root = {"file": tmp_path / "file", "under_a_file": tmp_path / "file" / "runs", "proc": Path("/proc/ndode-runs"),
            "read_only": ro / "runs"}[where]
    p = subprocess.run([sys.executable, str(SCRIPT), "budget=smoke", f"run_root={root}"], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.startswith(f"error: run_root={root}: run directories cannot be made there") and "Traceback" not in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["file", "ro"] and not list(ro.iterdir())


# a run of the demo that sends itself SIGTERM in one phase ($SIGNAL_IN), as a scheduler's kill would land there
_SIGNAL_SCRIPT = '''
import os, signal, sys
import hydra
from ndode.harness import run_experiment
from ndode.harness.record import RunRecord

from ndode.experiments import ode_demo

PHASE = os.environ["SIGNAL_IN"]


def kill(phase):
    if phase == PHASE:
        os.kill(os.getpid(), signal.SIGTERM)


class Task(ode_demo.ODEDemoTask):
    def __init__(self, cfg, ctx):
        kill("setup")  # building the task: data loading
        super().__init__(cfg, ctx)

    def load_state_dict(self, state):
        kill("resume")  # inside the checkpoint loader's `except Exception`
        super().load_state_dict(state)

    def analyze(self, run_dir):
        kill("analyze")
        return super().analyze(run_dir)

    def make_figures(self, run_dir):
        kill("finish")


write_meta = RunRecord.write_meta
def commit(self, meta):  # the final meta.json write: the signal must wait for the done marker
    if meta.get("status") == "done":
        kill("commit")
    write_meta(self, meta)
RunRecord.write_meta = commit


@hydra.main(version_base="1.3", config_path={configs!r}, config_name="ode_demo")
def main(cfg):
    return run_experiment(cfg, Task)


main()
'''


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["setup", "resume", "analyze", "finish", "commit"])
def test_sigterm_outside_the_unit_loop_leaves_the_run_interrupted(tmp_path, clean, phase):
    run_dir = _interrupted(tmp_path)  # an earlier attempt: checkpoint at iter 15
    attempts = len(_meta(run_dir)["attempts"])
    script = tmp_path / "signal_demo.py"
    script.write_text(_SIGNAL_SCRIPT.format(configs=str(REPO / "configs")))
    p = subprocess.run([sys.executable, str(script), *RUN, f"run_root={tmp_path}", "quiet=true"], cwd=REPO,
                       env={**_env(), "SIGNAL_IN": phase}, capture_output=True, text=True, timeout=240)
    out = p.stdout + p.stderr
    assert "Traceback" not in out, out
    meta = _meta(run_dir)
    if phase == "commit":  # the signal came as the run was being marked done: it waits, the run is complete
        assert p.returncode == 0 and "SIGTERM came while" in out, out
        assert meta["status"] == "done" and (run_dir / "done").exists()
        return
    assert p.returncode == 128 + signal.SIGTERM, out
    assert f"interrupted: SIGTERM during {phase} of {run_dir}" in out and "run the same command again" in out, out
    assert meta["status"] == "interrupted" and not (run_dir / "done").exists()
    if phase in ("setup", "resume"):  # before this attempt's record began: the directory is as it was
        assert len(meta["attempts"]) == attempts
        assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 15
    else:
        assert meta["attempts"][-1]["interrupted"]["phase"] == phase and meta["reason"] == f"SIGTERM during {phase}"
    summary, _ = _run(tmp_path)  # the same command again
    assert _strip(summary) == clean[0] and _metrics(run_dir) == clean[1]
    assert _meta(run_dir)["status"] == "done"

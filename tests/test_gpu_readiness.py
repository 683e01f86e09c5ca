"""GPU readiness, tested on any device: host synchronisations per solve, and the core's import structure.

A read of a device tensor from the host (``.item()``, ``float(t)``, ``.tolist()``,
``bool(t)``) makes the host wait for the GPU. The adaptive loop needs one per
attempted step (the accept/reject decision) and the automatic initial step one
more; everything else (the finiteness of ``y0``, the integration times) must
ride on those.
"""

import ast
import collections
import pathlib

import pytest
import torch

import ndode
from ndode.models.mnist import build_mnist_model
from ndode.models.odeblock import ode_blocks

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture
def host_reads(monkeypatch):
    """Counts every read of a tensor's value from the host while the test runs."""
    counts = collections.Counter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize("model", ["odenet", "rknet"])
def test_host_syncs_per_odenet_forward_and_backward(model, device, host_reads):
    torch.manual_seed(0)
    net = build_mnist_model(model, dim=8, downsampling="conv").to(device)
    x = torch.randn(2, 1, 28, 28, device=device)
    host_reads.clear()
    logits = net(x)
    stats = next(ode_blocks(net)).last_stats
    forward = sum(host_reads.values())
    assert stats.n_steps > 0
    # one read per attempted step, one for the initial step size; nothing for y0 or the times
    assert forward <= stats.n_steps + 1, (dict(host_reads), stats)
    host_reads.clear()
    logits.sum().backward()
    if model == "odenet":  # the adjoint's backward solve: the same budget
        assert sum(host_reads.values()) <= stats.n_accepted_backward + stats.n_rejected_backward + 1, \
            (dict(host_reads), stats)


def test_fixed_step_solve_reads_once_per_output_time(host_reads):
    y0 = torch.randn(3, 2)
    sol = ndode.solve(lambda t, y: -y, y0, [0.0, 0.5, 1.0], method="rk4", options={"step_size": 0.1})
    assert sum(host_reads.values()) == 2 and sol.stats.n_accepted == 10


def test_non_finite_y0_is_still_named_without_its_own_sync():
    # the finiteness check of y0 rides on the first read; it must still name y0, in every kind of solve
    y0 = torch.tensor([1.0, float("inf")])
    for kw in (dict(), dict(options={"first_step": 0.1}), dict(method="rk4", options={"step_size": 0.1})):
        with pytest.raises(ValueError, match="y0 contains non-finite values"):
            # func ignores y: err / inf = 0 would pass the error test, the state would silently stay inf
            ndode.odeint(lambda t, y: torch.ones_like(y), y0, torch.tensor([0.0, 1.0]), **kw)
    with pytest.raises(ValueError, match="y0 contains non-finite values"):
        ndode.odeint(lambda t, y: -y, (y0, torch.tensor([float("nan")])), torch.tensor([0.0]))


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # every import, at the top or inside a function
        if isinstance(node, ast.ImportFrom):
            yield ("." * node.level) + (node.module or "")
            for alias in node.names:
                yield ("." * node.level) + (node.module + "." if node.module else "") + alias.name
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_the_core_never_imports_the_adjoint():
    # the whole import graph (cycles, direction) is tests/test_imports.py's; this is the adjoint's side of it
    pkg = pathlib.Path(ndode.__file__).parent
    for path in (pkg / "solver.py", pkg / "tableau.py", *sorted((pkg / "ode").glob("*.py"))):
        bad = [m for m in _imports(path) if "adjoint" in m]
        assert not bad, f"{path.relative_to(pkg)} imports {bad}"
    assert any(m.startswith(".ode") for m in _imports(pkg / "adjoint.py"))


@pytest.mark.slow
def test_gpu_check_rehearsal_on_cpu(tmp_path):
    """scripts/gpu_check.py, the script the first GPU machine runs, rehearsed here on one experiment and two
    benchmarks (`make gpu-check DEVICE=cpu` is the whole rehearsal): every step runs and the files come back."""
    import csv
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--out", str(tmp_path),
                           "--experiments", "ode_demo", "--benchmarks", "cnf_step,diffrax_mlp",
                           "--tests", "tests/test_gpu_readiness.py"],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = list(csv.DictReader(open(tmp_path / "checks.csv")))
    assert [r["step"] for r in rows] == ["1 install", "2 tests", "3 smoke", "4 paper slice", "5 benchmark",
                                         "5 benchmark"]
    assert all(r["ok"] == "True" for r in rows)
    paper = list(csv.DictReader(open(tmp_path / "paper_budget.csv")))
    assert paper[0]["experiment"] == "ode_demo" and float(paper[0]["s_per_step"]) > 0
    assert int(paper[0]["paper_steps"]) == 5050
    bench = list(csv.DictReader(open(tmp_path / "bench_cnf_step.csv")))
    assert all(int(r["host_reads"]) > 0 for r in bench)  # counted: one per attempted step and a few more
    assert "| 4 paper slice | ode_demo | yes |" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("flag", [["--experiments", "ode_demo,mnistt"], ["--benchmarks", "cnf_stepp"]])
def test_gpu_check_names_an_unknown_experiment_or_benchmark_before_any_work(tmp_path, flag):
    """A typo in the one GPU run's command costs the device's time: it is refused before anything is installed or
    written, with the known names."""
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--out", str(tmp_path / "o"),
                           *flag], cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    bad = flag[1].split(",")[-1]
    assert f"'{bad}'" in proc.stderr and "experiments: [" in proc.stderr and "benchmarks: [" in proc.stderr
    assert not (tmp_path / "o").exists()  # nothing written

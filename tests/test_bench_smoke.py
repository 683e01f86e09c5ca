"""The benchmark code path (`make bench-quick` / `make bench`) on tiny sizes, so it cannot rot.

Nothing here is timed or compared: the numbers of a tiny run are meaningless.
Checks that every benchmark runs against every installed peer, writes its CSV
(and plot) and that the summary README has a section per benchmark.
"""

import pytest

pytest.importorskip("torchdiffeq")
pytest.importorskip("torchode")
pytest.importorskip("scipy")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")


@pytest.mark.slow
def test_bench_tiny_writes_everything(tmp_path):
    import torch

    from benchmarks.__main__ import MODULES, run_all

    threads = torch.get_num_threads()
    lines = []
    try:
        results = run_all("tiny", out=tmp_path, log=lines.append)
    finally:
        torch.set_num_threads(threads)
    assert set(results) == set(MODULES)
    readme = (tmp_path / "README.md").read_text()
    for name, mod in MODULES.items():
        df = results[name]
        assert len(df) > 0, name
        assert (tmp_path / f"{name}.csv").exists(), name
        if hasattr(mod, "plot"):
            assert (tmp_path / f"{name}.png").stat().st_size > 0, name
    assert sum(line.startswith("[") for line in lines) == len(MODULES), lines  # one summary line each
    # every peer took part somewhere, and ndode's own NFE statistics agree with a counted func
    peers = set(results["overhead"].peer) | set(results["work_precision"].peer)
    assert peers == {"ndode", "torchdiffeq", "torchode", "scipy"}
    assert "## 1. Solver overhead" in readme and "## 6. Backward NFE" in readme and "## 7. CNF training" in readme
    cnf = results["cnf_step"]
    assert set(cnf.library) == {"ndode", "torchdiffeq"} and (cnf.nfe_forward > 6).all() and (cnf.nfe_backward > 6).all()
    assert (cnf.grad_rel_diff_vs_torchdiffeq_full < 1e-2).all()  # same model, data, tolerances: same gradient
    assert (tmp_path / "machine.json").exists()


def test_ndode_stats_match_a_counted_func():
    import torch

    import ndode
    from benchmarks import peers as P
    from benchmarks.problems import VanDerPol

    f = VanDerPol()
    y0 = torch.tensor([f.y0], dtype=torch.float64)
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    _, counted = P.count_nfe("ndode", f, "dopri5", y0, t, 1e-6, 1e-6)
    assert ndode.solve(f, y0, t, rtol=1e-6, atol=1e-6).stats.nfe == counted

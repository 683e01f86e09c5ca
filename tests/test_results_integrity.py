"""Published results change only on purpose, and a table cell never averages runs of different configurations.

The run records here are written directly (config composed by Hydra as the experiment would, a made-up summary):
what is under test is the path from records to tables and figures, not training.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytest.importorskip("hydra")
pytest.importorskip("matplotlib")

from _support import compose_config, load_script  # noqa: E402

from ndode.harness import load_runs  # noqa: E402
from ndode.harness.config import to_plain  # noqa: E402
from ndode.report.tables import TABLES, mean_std, seed_table  # noqa: E402


def record(root: Path, experiment: str, overrides: list[str], summary: dict, seed: int, name: str | None = None,
           finished: str = "2026-12-01T00:00:00+00:00") -> Path:
    """A finished run record as the harness leaves it (config, meta, summary, done)."""
    importlib.import_module(f"ndode.experiments.{experiment}")  # registers the schema
    cfg = compose_config(experiment, *overrides, f"seed={seed}", "device=cpu")
    config = to_plain(cfg)
    d = root / experiment / (name or ",".join([*overrides, f"seed={seed}"]))
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (d / "meta.json").write_text(json.dumps({"status": "done", "git": {"commit": "0" * 40, "dirty": False},
                                             "started": finished, "finished": finished}))
    summary = {"steps": config["budget"]["steps"], "unit": config["budget"]["unit"], **summary}  # as the harness adds
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "done").write_text(finished)
    return d


def _latent(rmse: float) -> dict:
    """A summary with every reading of Table 2 (ndode.report.latent_ode.READINGS) at ``rmse``."""
    from ndode.report.latent_ode import READINGS

    return {**{c: rmse for r in READINGS for c in (r.test, r.val)}, "wall_time_s": 1.0}


def test_latent_table_never_averages_runs_with_another_learning_rate(tmp_path):
    """The issue's first example: two RNN runs at n = 30 with budget.lr=1000 beside two ordinary ones."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    base = ["model=rnn", "data.n_obs=30", "budget=smoke"]
    for seed in (0, 1):
        record(runs, "latent_ode", base, _latent(0.5 + 0.01 * seed), seed)
        record(runs, "latent_ode", ["model=latent_ode", "data.n_obs=30", "budget=smoke"], _latent(0.3), seed)
    for seed in (2, 3):
        record(runs, "latent_ode", [*base, "budget.lr=1000"], _latent(165005087.0 * seed), seed)
    assert load_script("make_tables").main(["--runs", str(runs), "--out", str(out), "--experiment", "latent_ode"]) == 0
    md = (out / "tables" / "latent_table2.md").read_text()
    assert "16500" not in md and "8250" not in md  # no pooled mean or std of the lr=1000 runs
    assert "budget.lr" in md and "left out" in md.lower()  # the note names the differing option
    assert "0.3" in md  # the latent ODE's cell, one configuration, is still there


@pytest.mark.slow
def test_cnf_table_never_averages_runs_with_other_steps(tmp_path):
    """The issue's second example: a Figure 5 CNF run with budget.steps=800 beside the smoke runs."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    base = ["data=moons", "size=64", "budget=smoke"]
    nll = {"nll_test": 3.0, "nll_test_se": 0.1, "task": "mle", "wall_time_s": 1.0, "nfe_forward": 10.0,
           "nfe_backward": 20.0}
    for seed in (0, 1):
        record(runs, "cnf", [*base, "flow=cnf"], nll, seed)
        record(runs, "cnf", [*base, "flow=planar"], nll, seed)
    record(runs, "cnf", [*base, "flow=cnf", "budget.steps=800"], {**nll, "nll_test": 0.5}, 2)
    for flow in ("cnf", "planar"):  # and Figure 4's runs, as a reproduce sweep leaves them
        record(runs, "cnf", ["data=U1", "size=2", f"flow={flow}", "budget=smoke"],
               {"kl": 1.0, "kl_se": 0.1, "task": "density", "wall_time_s": 1.0}, 0)
    assert load_script("make_tables").main(["--runs", str(runs), "--out", str(out), "--experiment", "cnf"]) == 0
    table = pd.read_csv(out / "tables" / "cnf_fig5_nll.csv")
    assert set(table["model"]) == {"planar"}  # the CNF cell is left out whole: its runs are two configurations
    assert (table["n_seeds"] == 2).all()
    md = (out / "tables" / "cnf_fig5_nll.md").read_text()
    assert "budget.steps" in md and "seeds 0,1" in md and "seeds 2" in md


def test_latent_table_keeps_an_rnns_candidates_apart_and_chooses_on_validation(tmp_path):
    """model=rnn and model=rnn_ss are one model.name with two model.feed_prev values: two candidates the report
    chooses between on validation, not one mixed cell that drops both (as the first cpu sweep's table did)."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    for seed in (0, 1, 2):
        record(runs, "latent_ode", ["model=rnn", "data.n_obs=30", "budget=smoke"], _latent(0.9), seed)
        record(runs, "latent_ode", ["model=rnn_ss", "data.n_obs=30", "budget=smoke"], _latent(0.7), seed)
        record(runs, "latent_ode", ["model=latent_ode", "data.n_obs=30", "budget=smoke"], _latent(0.3), seed)
    assert load_script("make_tables").main(["--runs", str(runs), "--out", str(out), "--experiment", "latent_ode"]) == 0
    md = (out / "tables" / "latent_table2.md").read_text()
    assert "left out" not in md.lower() and "0.7" in md and "0.9" not in md  # scheduled sampling chosen (lower val)


def test_mnist_table_keeps_rknet_and_odenet_apart(tmp_path):
    """RK-Net is the ODE-Net architecture with solver.adjoint=none: a cell per (model, adjoint), not one mixed cell
    that drops both rows (as Table 1 did after make reproduce-mnist)."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    summary = {"test_error": 0.02, "params": 208266, "saved_bytes": 1e6, "step_time_s": 0.5, "wall_time_s": 1.0}
    for seed in (0, 1):
        for model in ("odenet", "rknet", "resnet"):
            record(runs, "mnist", [f"model={model}", "budget=smoke"], summary, seed)
    assert load_script("make_tables").main(["--runs", str(runs), "--out", str(out), "--experiment", "mnist"]) == 0
    table = pd.read_csv(out / "tables" / "mnist_table1.csv")
    assert set(table["model"]) == {"odenet", "rknet", "resnet"} and (table["n_seeds"] == 2).all()
    assert "left out" not in (out / "tables" / "mnist_table1.md").read_text().lower()


def test_a_seed_counts_once_and_unrelated_options_do_not_split_a_cell():
    from ndode.report.tables import one_config_per_cell

    df = pd.DataFrame({
        "budget.name": ["cpu"] * 4, "seed": [0, 0, 1, 2], "m": [1.0, 2.0, 3.0, 4.0],
        "config_id": ["a", "a", "a", "a"], "config_json": ['{"x": 1}'] * 4,
        "finished": ["2026-01-01", "2026-01-02", "2026-01-01", "2026-01-01"]})
    kept, notes = one_config_per_cell(df, ["budget.name"])
    assert sorted(kept["seed"]) == [0, 1, 2] and kept[kept["seed"] == 0]["m"].item() == 2.0  # the latest
    assert len(notes) == 1 and "seed(s) 0 ran more than once" in notes[0]
    assert seed_table(kept, ["budget.name"], ["m"])["n_seeds"].item() == 3


def test_logging_options_and_the_seed_are_not_part_of_a_configuration(tmp_path):
    runs = tmp_path / "runs"
    demo = {"mse_heldout": 0.1, "nfe_forward": 10.0, "nfe_eval": 20.0, "wall_time_s": 1.0}
    record(runs, "ode_demo", ["budget=smoke"], demo, 0)
    record(runs, "ode_demo", ["budget=smoke", "budget.log_every=7", "run_root=elsewhere", "quiet=true"], demo, 1)
    record(runs, "ode_demo", ["budget=smoke", "budget.steps=9"], demo, 2)
    df = load_runs(runs)
    ids = dict(zip(df["seed"], df["config_id"]))
    assert ids[0] == ids[1] != ids[2]


def _demo(root: Path, budget: str, seed: int = 0, mse: float = 0.1) -> Path:
    return record(root, "ode_demo", [f"budget={budget}"], {"mse_heldout": mse, "nfe_forward": 10.0, "nfe_eval": 20.0,
                                                            "wall_time_s": 1.0}, seed, name=f"budget={budget},seed={seed}")


def test_tables_at_every_budget_go_to_their_own_folder_and_never_to_the_published_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    published = tmp_path / "results" / "tables" / "ode_demo.md"
    published.parent.mkdir(parents=True)
    published.write_text("the published table\n")
    runs = tmp_path / "results" / "runs"
    _demo(runs, "cpu")
    _demo(runs, "smoke")
    assert load_script("make_tables").main([]) == 0
    assert published.read_text() == "the published table\n"
    for budget in ("cpu", "smoke"):
        md = (tmp_path / "results" / "local" / budget / "tables" / "ode_demo.md").read_text()
        assert f"| {budget} |" in md and "| 1 |" in md  # one budget, one seed each


def test_make_figures_honours_budget_and_skips_experiments_without_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _demo(tmp_path / "results" / "runs", "smoke")  # no arrays: nothing to draw
    assert load_script("make_figures").main(["--budget", "smoke"]) == 0
    err = capsys.readouterr().err
    assert "mnist (budget smoke): skipped" in err and "ode_demo (budget smoke): skipped" in err
    assert "Traceback" not in err
    assert not (tmp_path / "results" / "figures").exists()  # nothing published
    assert load_script("make_figures").main(["--budget", "smoke", "--experiment", "ode_demo"]) == 1  # asked for it


def test_one_experiments_problem_does_not_stop_the_others(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    _demo(runs, "smoke")
    record(runs, "latent_ode", ["model=rnn", "data.n_obs=30", "budget=smoke"], {"val_rmse": 1.0}, 0)  # no test_rmse
    assert load_script("make_tables").main(["--runs", str(runs), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error: latent_ode at budget smoke:" in err and "Traceback" not in err
    assert (out / "tables" / "ode_demo.md").exists()


def test_publish_refuses_smoke_and_another_budget(tmp_path):
    from ndode.report.outputs import check_publish

    with pytest.raises(ValueError, match="budget smoke is never published"):
        check_publish("ode_demo", "smoke", root=tmp_path)
    (tmp_path / "summary").mkdir()
    (tmp_path / "summary" / "ode_demo.csv").write_text("run,budget.name\nx,cpu\n")
    check_publish("ode_demo", "cpu", root=tmp_path)
    with pytest.raises(ValueError, match=r"made at budget cpu .*publishing budget paper would replace"):
        check_publish("ode_demo", "paper", root=tmp_path)


def test_publish_needs_one_budget(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert load_script("make_tables").main(["--runs", str(tmp_path / "runs"), "--publish"]) == 2
    assert "--publish needs exactly one --budget" in capsys.readouterr().err
    assert set(TABLES) == {"ode_demo"}


def test_a_corrupt_record_is_left_out_with_a_line_naming_it(tmp_path, caplog):
    runs, out = tmp_path / "runs", tmp_path / "out"
    _demo(runs, "smoke", seed=0)
    bad = _demo(runs, "smoke", seed=1)
    (bad / "meta.json").write_text("{not json")
    assert load_script("make_tables").main(["--runs", str(runs), "--out", str(out)]) == 0
    assert f"left out {bad}: {bad / 'meta.json'} cannot be read" in caplog.text
    assert "| 1 |" in (out / "tables" / "ode_demo.md").read_text()  # the other run is tabulated


def test_mean_std_is_the_one_statistic_of_every_table():
    """Mean and sample std (ddof=1) of the numbers given, skipping what is not one; NaN std for one value."""
    m, s, n = mean_std([1.0, 2.0, None, float("nan"), "x", 4.0])
    assert (m, n) == (7 / 3, 3) and s == pytest.approx(1.5275252316519468, rel=1e-15)
    assert mean_std(pd.Series([2, 3]))[:2] == (2.5, pytest.approx(0.7071067811865476))
    one = mean_std([5.0])
    assert one[0] == 5.0 and one[1] != one[1] and one[2] == 1
    empty = mean_std(None)
    assert empty[0] != empty[0] and empty[1] != empty[1] and empty[2] == 0
    # the report modules use it: their tables agree with it to the last digit
    from ndode.report import cnf, latent_ode, mnist, tables
    for mod in (cnf, latent_ode, mnist, tables):
        assert mod.mean_std is mean_std


def test_summary_writes_the_integers_the_records_hold(tmp_path):
    """All experiments' runs load into one frame, so an integer option that another experiment lacks arrives as
    float; the summary CSV writes it back as the integer it was (100, not 100.0), and leaves true floats alone."""
    part = pd.DataFrame({"run": ["a", "b"], "budget.batch_size": [100.0, 100.0], "lr": [0.01, 0.5],
                         "nfe": [12.0, float("nan")]})
    (tmp_path / "summary").mkdir()
    path = load_script("make_tables")._summary(part, tmp_path, "x")
    lines = path.read_text().splitlines()
    assert lines[0] == "run,budget.batch_size,lr,nfe"
    assert lines[1] == "a,100,0.01,12.0" and lines[2] == "b,100,0.5,"


def test_summary_columns_do_not_depend_on_the_other_experiments_loaded(tmp_path):
    """The collector's frame orders its columns by first appearance over every experiment's runs; the summary CSV
    of one experiment must come out the same whichever others were loaded beside it."""
    alone = pd.DataFrame({"run": ["a"], "status": ["done"], "seed": [0], "lr": [0.1], "nfe": [3]})
    beside = alone[["nfe", "run", "lr", "status", "seed"]]  # another experiment's runs put nfe first
    make_tables = load_script("make_tables")
    texts = []
    for i, part in enumerate((alone, beside)):
        (tmp_path / str(i) / "summary").mkdir(parents=True)
        texts.append(make_tables._summary(part, tmp_path / str(i), "x").read_text())
    assert texts[0] == texts[1]
    assert texts[0].splitlines()[0] == "run,status,lr,nfe,seed"

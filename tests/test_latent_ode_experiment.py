"""The latent-ODE experiment end to end at the smoke budget, its config errors, the non-finite-ELBO stop,
and Table 2 / Figures 8-9 / the learning curves built from the smoke records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("hydra")
from _support import compose_config, load_script  # noqa: E402
from hydra.errors import ConfigCompositionException  # noqa: E402

from ndode.data.spirals import READINGS as READING_DEFINITIONS  # noqa: E402
from ndode.experiments import latent_ode as latent  # noqa: E402
from ndode.harness import ConfigError, load_runs, run_experiment  # noqa: E402
from ndode.report.latent_ode import figure8_runs, plot_fig8, plot_fig9, table2, table2_markdown, verdicts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]




def compose_latent(*overrides):
    return compose_config("latent_ode", *overrides)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """One smoke run per model at n_obs = 30 (and the latent ODE at 50), seeds 0 and 1 for two of them, and the
    plain RNN's scheduled-sampling candidate (model=rnn_ss)."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for model, n, seed in (("latent_ode", 30, 0), ("latent_ode", 30, 1), ("rnn", 30, 0), ("rnn", 30, 1),
                           ("rnn_ss", 30, 0), ("rnn_ss", 30, 1), ("rnn_dt", 30, 0), ("latent_ode", 50, 0)):
        cfg = compose_latent(f"model={model}", f"data.n_obs={n}", "budget=smoke", "quiet=true", f"seed={seed}",
                             f"run_root={root}")
        run_dir = root / "latent_ode" / f"budget=smoke,data.n_obs={n},model={model},seed={seed}"
        runs[(model, n, seed)] = (run_experiment(cfg, latent.LatentODETask, run_dir=run_dir), run_dir)
    return root, runs


@pytest.mark.parametrize("model", ["latent_ode", "rnn", "rnn_ss", "rnn_dt"])
@pytest.mark.slow
def test_smoke_run_learns_and_reports(model, smoke_runs):
    _, runs = smoke_runs
    s, run_dir = runs[(model, 30, 0)]
    assert (run_dir / "done").exists()
    # every model: the same readings, on both held-out splits
    for split in ("val", "test"):
        for k in READING_DEFINITIONS:
            assert np.isfinite(s[f"{split}_{k}"]) and s[f"{split}_{k}"] > 0, (split, k)
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    train = [r for r in records if r["kind"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]  # the objective falls
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]
    # the validation split at every evaluation, the test split only at the end: no test reading exists during
    # training that a choice could look at
    assert all(f"val_{k}" in r for r in evals for k in READING_DEFINITIONS)
    assert [r["step"] for r in evals if any(k.startswith("test_") for k in r)] == [6]
    a = dict(np.load(run_dir / "arrays" / "spirals.npz"))
    assert a["extrap_x"].shape[1:] == (100, 2) and a["clean"].shape[1:] == (200, 2) and a["fit_x"].shape[1:] == (100, 2)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["model"]["feed_prev"] == (0.5 if model == "rnn_ss" else 0.0)
    if model == "latent_ode":  # the smoke budget trains with the adjoint; the paper's tolerance after training
        assert s["nfe_forward"] > 0 and s["nfe_backward"] > 0 and s["paper_tol"] == 1.5e-8
        assert s["nfe_eval_paper_tol"] > s["nfe_eval"]  # 1.5e-8 takes more steps than the training tolerance
        for k in READING_DEFINITIONS:  # the same model, solved more accurately: nearly the same readings
            assert s[f"test_{k}_paper_tol"] == pytest.approx(s[f"test_{k}"], rel=1e-3)
        assert a["vary_x"].shape[0] == len(a["vary_values"]) and a["latent_z"].shape[-1] == 4
    else:  # the RNN rolls out at its training resolution: the mean gap of 30 points among 100 (~3.3 grid steps)
        grid_dt = 6 * np.pi / 999
        assert 2.8 * grid_dt < s["rollout_dt"] < 3.8 * grid_dt and "test_rmse_window_noisy_paper_tol" not in s


@pytest.mark.slow
def test_table2_and_figures_from_run_records(smoke_runs, tmp_path):
    root, _ = smoke_runs
    df = load_runs(root)
    t = table2(df)
    assert {"budget", "reading", "model", "n_obs", "n_seeds", "median", "min", "max", "paper", "within",
            "model.feed_prev", "median_paper_tol"} <= set(t.columns)
    b = t[t.reading == "b_clean"]
    row = b[(b.model == "latent_ode") & (b.n_obs == 30)].iloc[0]
    runs = df[(df["model.name"] == "latent_ode") & (df["data.n_obs"] == 30)]["test_rmse_extrap_clean"]
    assert row.n_seeds == 2 and row["median"] == pytest.approx(runs.median())
    assert row["max"] == pytest.approx(runs.max())
    assert row.paper == 0.1642 and np.isfinite(row.median_paper_tol)
    # the plain RNN: two candidates, the one with the lower validation median chosen (per reading)
    rnn = df[df["model.name"] == "rnn"]
    for key, val_col in (("b_clean", "val_rmse_extrap_clean"), ("a_noisy", "val_rmse_window_noisy")):
        med = rnn.groupby("model.feed_prev")[val_col].median()
        r = t[(t.reading == key) & (t.model == "rnn")].iloc[0]
        assert r["model.feed_prev"] == med.idxmin() and r.n_candidates == 2 and r.val_median == pytest.approx(med.min())
    v = verdicts(t)
    assert v[(v.reading == "b_clean") & (v.n_obs == 50)].iloc[0].beats_median is None  # no RNN at n = 50
    md = table2_markdown(t, noise_std=0.1)
    assert "median [min–max] over 1–2 seeds" in md and "0.3937" in md and "At every n: not measured" in md
    chosen = figure8_runs(df, "smoke")
    assert set(chosen) == {"rnn", "latent_ode"} and chosen["rnn"].endswith(
        f"model={'rnn_ss' if t[(t.reading == 'b_clean') & (t.model == 'rnn')].iloc[0]['model.feed_prev'] else 'rnn'},"
        "seed=0")
    a_rnn = dict(np.load(Path(chosen["rnn"]) / "arrays" / "spirals.npz"))
    a_lat = dict(np.load(Path(chosen["latent_ode"]) / "arrays" / "spirals.npz"))
    assert len(plot_fig8(a_rnn, a_lat).axes) >= 9
    assert len(plot_fig9(a_lat).axes) >= 2
    # the scripts: Table 2 and the figures, learning curves included, from the records
    out = tmp_path / "out"
    assert load_script("make_figures").main(["--runs", str(root), "--out", str(out), "--experiment", "latent_ode",
                                             "--budget", "smoke"]) == 0
    assert {p.name for p in out.iterdir()} == {"latent_fig8.png", "latent_fig9.png", "latent_learning_curves.png"}


@pytest.mark.slow
def test_figures_8_and_9_name_their_budget(smoke_runs, tmp_path, monkeypatch):
    """A smoke figure must not look like a real one: its title says budget=smoke."""
    make_figures, titles = load_script("make_figures"), {}

    def save(fig, path):
        titles[path.name] = fig._suptitle.get_text()
        return path

    monkeypatch.setattr(make_figures, "save_figure", save)
    make_figures.latent_ode(smoke_runs[0], tmp_path, None, "smoke")
    assert sorted(titles) == ["latent_fig8.png", "latent_fig9.png", "latent_learning_curves.png"]
    assert all("budget=smoke" in t or "budget smoke" in t for t in titles.values()), titles


@pytest.mark.parametrize("override, option", [
    ("data.n_obs=101", "data.n_obs"), ("data.n_obs=0", "data.n_obs"), ("data.noise_std=0", "data.noise_std"),
    ("data.noise_std=-0.5", "data.noise_std"), ("model.obs_std=0", "model.obs_std"), ("budget.lr_final=1", "lr_final"),
    ("budget.decay_until=0", "budget.decay_until"), ("budget.decay_until=1.5", "budget.decay_until"),
    ("model.feed_prev=0.5", "model.feed_prev=0.5: scheduled sampling is for model=rnn|rnn_dt"),
    ("model.feed_prev=1.5", "model.feed_prev"),
])
def test_bad_values_fail_before_any_work_naming_the_option(override, option, tmp_path):
    cfg = compose_latent(override, "budget=smoke", "quiet=true", f"run_root={tmp_path}")
    with pytest.raises(ConfigError, match=option.replace(".", r"\.").replace("|", r"\|")):
        run_experiment(cfg, latent.LatentODETask, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_cosine_ends_at_decay_until_and_holds_the_final_rate():
    """The cpu budget's schedule: the cosine from lr reaches lr_final at 80 % of the run and stays there, so the
    last 20 % (the convergence check's window) is all at the final rate."""
    from ndode.experiments._latent import cosine_factor

    b = compose_latent("budget=cpu").budget
    assert b.decay_until == 0.8 and b.lr_final < b.lr
    rate = cosine_factor(b)
    end = int(0.8 * b.steps)
    assert rate(0) * b.lr == pytest.approx(b.lr) and rate(end // 2) * b.lr == pytest.approx((b.lr + b.lr_final) / 2)
    assert [rate(s) * b.lr for s in range(end, b.steps + 1)] == pytest.approx([b.lr_final] * (b.steps + 1 - end))
    assert rate(end - 100) * b.lr > 1.01 * b.lr_final  # still decaying just before the window


def test_rnn_needs_two_observations(tmp_path):
    cfg = compose_latent("model=rnn", "data.n_obs=1", "budget=smoke", f"run_root={tmp_path}")
    with pytest.raises(ConfigError, match=r"data\.n_obs=1"):
        run_experiment(cfg, latent.LatentODETask, run_dir=tmp_path / "run")


@pytest.mark.parametrize("override, match", [("model=gru", "model"), ("model.name=gru", "model.name")])
def test_unknown_model_name_is_refused(override, match):
    with pytest.raises(ConfigCompositionException) as e:
        compose_latent(override)
    text = f"{e.value} {e.value.__cause__}"
    assert match in text and "gru" in text


@pytest.mark.slow
def test_non_finite_elbo_stops_naming_iteration_and_nfe_and_keeps_the_checkpoint(tmp_path):
    class Poisoned(latent.LatentODETask):
        def train_step(self, step):
            if step == 3:  # the decoder starts emitting NaN at the 4th iteration
                with torch.no_grad():
                    self.model.decoder.net[-1].bias.fill_(float("nan"))
            return super().train_step(step)

    cfg = compose_latent("budget=smoke", "quiet=true", f"run_root={tmp_path}")
    run_dir = tmp_path / "run"
    with pytest.raises(latent.NonFiniteLossError, match=r"non-finite ELBO \(nan\) at iteration 4/6 \(NFE-F \d+\)") as e:
        run_experiment(cfg, Poisoned, run_dir=run_dir)
    assert "last good checkpoint" in str(e.value)
    assert not (run_dir / "done").exists()
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2  # saved every 2 iterations: the last one before the failure, not overwritten
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    # rerunning resumes from that checkpoint and, without the poison, finishes
    s = run_experiment(cfg, latent.LatentODETask, run_dir=run_dir)
    assert (run_dir / "done").exists() and np.isfinite(s["test_rmse_extrap_clean"])

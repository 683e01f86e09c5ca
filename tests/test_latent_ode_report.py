"""Table 2's builder as pure functions of run records: the validation choice of the RNN variants, the statistics over
seeds, the verdicts (latent ODE below both RNNs; within 1.5x of the paper), the convergence flag and the Markdown,
on a small synthetic DataFrame whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ndode.report.latent_ode import (
    FLAT_REL,
    READINGS,
    convergence,
    select_on_validation,
    table2,
    table2_markdown,
    verdicts,
)

SEEDS = range(5)


def yes(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and bool(v) is True


def no(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and bool(v) is False


def _runs(spec: dict) -> pd.DataFrame:
    """``spec[(model, n, feed_prev)] = (val, test)``: per-seed lists (or one number for every seed) of every reading's
    validation and test value."""
    rows = []
    for (model, n, fp), (val, test) in spec.items():
        for i in SEEDS:
            v = val[i] if isinstance(val, list) else val
            t = test[i] if isinstance(test, list) else test
            row = {"budget.name": "cpu", "model.name": model, "data.n_obs": n, "model.feed_prev": fp, "seed": i,
                   "wall_time_s": 60.0, "run": f"{model}-{n}-{fp}-{i}", "run_dir": f"runs/{model}-{n}-{fp}-{i}"}
            for r in READINGS:
                row[r.val], row[r.test] = v, t
                if model == "latent_ode":
                    row[f"{r.test}_paper_tol"] = t + 0.001
            rows.append(row)
    return pd.DataFrame(rows)


LATENT_30 = [0.10, 0.12, 0.14, 0.16, 0.50]  # median 0.14; its worst seed (0.5) is worse than an RNN's best
RNN_30_CHOSEN = [0.30, 0.40, 0.50, 0.60, 0.70]  # median 0.5


@pytest.fixture
def runs():
    return _runs({
        ("latent_ode", 30, 0.0): (0.2, LATENT_30),
        # the plain RNN: scheduled sampling wins on validation (0.3 < 0.5) though it is worse on test; the choice
        # must follow validation
        ("rnn", 30, 0.0): (0.5, 0.35),
        ("rnn", 30, 0.5): (0.3, RNN_30_CHOSEN),
        ("rnn_dt", 30, 0.0): (0.4, 0.9),
        ("rnn_dt", 30, 0.5): (0.6, 0.2),
        ("latent_ode", 50, 0.0): (0.7, 0.7),  # worse than both RNNs at n = 50
        ("rnn", 50, 0.0): (0.3, 0.3),
        ("rnn_dt", 50, 0.0): (0.3, 0.32),
    })


def test_the_variant_is_chosen_on_validation_never_on_test(runs):
    b = READINGS[-1]
    chosen = select_on_validation(runs, b)
    pick = chosen.groupby(["model.name", "data.n_obs"])["model.feed_prev"].unique()
    assert list(pick[("rnn", 30)]) == [0.5] and list(pick[("rnn_dt", 30)]) == [0.0]
    assert len(chosen) == 6 * 5  # one variant of each (model, n), all its seeds
    # changing the test values never changes the choice; changing the validation ones does
    flipped = runs.copy()
    flipped.loc[(flipped["model.name"] == "rnn") & (flipped["model.feed_prev"] == 0.0), b.test] = 0.01
    assert select_on_validation(flipped, b)["run_dir"].tolist() == chosen["run_dir"].tolist()
    flipped.loc[(flipped["model.name"] == "rnn") & (flipped["model.feed_prev"] == 0.0), b.val] = 0.01
    pick2 = select_on_validation(flipped, b).groupby(["model.name", "data.n_obs"])["model.feed_prev"].unique()
    assert list(pick2[("rnn", 30)]) == [0.0]


def test_table2_statistics_over_seeds(runs):
    t = table2(runs, _evals(runs))
    assert set(t["reading"]) == {r.key for r in READINGS}
    row = t[(t.reading == "b_clean") & (t.model == "latent_ode") & (t.n_obs == 30)].iloc[0]
    assert row.n_seeds == 5 and row["median"] == 0.14 and row["min"] == 0.10 and row["max"] == 0.50
    assert row["mean"] == pytest.approx(np.mean(LATENT_30)) and row["std"] == pytest.approx(np.std(LATENT_30, ddof=1))
    assert row.paper == 0.1642 and row.ratio == pytest.approx(0.14 / 0.1642) and yes(row.within)
    assert row.median_paper_tol == pytest.approx(0.141) and yes(row.flat) and row.n_candidates == 1
    rnn = t[(t.reading == "b_clean") & (t.model == "rnn") & (t.n_obs == 30)].iloc[0]
    assert rnn["model.feed_prev"] == 0.5 and rnn["median"] == 0.5 and rnn.n_candidates == 2 and rnn.val_median == 0.3
    assert math.isnan(rnn.median_paper_tol)  # the RNNs solve nothing at the paper's tolerance
    assert yes(rnn.within)  # 0.5 / 0.3937 = 1.27
    lat50 = t[(t.reading == "b_clean") & (t.model == "latent_ode") & (t.n_obs == 50)].iloc[0]
    assert no(lat50.within)  # 0.7 / 0.1502 = 4.7
    low = runs.copy()
    low.loc[low["model.name"] == "latent_ode", READINGS[0].test] = 0.05
    r = table2(low)
    assert no(r[(r.reading == "a_noisy") & (r.model == "latent_ode") & (r.n_obs == 30)].iloc[0].within)  # 0.30x


def test_verdicts_per_n_and_at_every_n(runs):
    v = verdicts(table2(runs))
    b = v[v.reading == "b_clean"].set_index("n_obs")
    assert yes(b.loc[30, "beats_median"])  # 0.14 against 0.5 (rnn) and 0.9 (rnn_dt, chosen on validation)
    assert no(b.loc[30, "beats_every_seed"])  # the latent ODE's worst seed, 0.5, is above the RNN's best, 0.3
    assert no(b.loc[50, "beats_median"]) and no(b.loc["all", "beats_median"])
    # every n yes: only when each n is
    good = runs.copy()
    good.loc[(good["model.name"] == "latent_ode") & (good["data.n_obs"] == 50), READINGS[-1].test] = 0.1
    g = verdicts(table2(good))
    g = g[g.reading == "b_clean"].set_index("n_obs")
    assert yes(g.loc[50, "beats_median"]) and yes(g.loc["all", "beats_median"])
    # a missing model: not measured (None), and so is "at every n"
    partial = verdicts(table2(runs[~((runs["model.name"] == "rnn_dt") & (runs["data.n_obs"] == 50))]))
    p = partial[partial.reading == "b_clean"].set_index("n_obs")
    assert p.loc[50, "beats_median"] is None and p.loc["all", "beats_median"] is None and p.loc[30, "beats_median"]


STEPS = np.arange(90, 4501, 90)  # the cpu budget's evaluations: ten in the last 20 %


def _evals(runs: pd.DataFrame, curve=lambda run, step: 0.2) -> pd.DataFrame:
    """Evaluation records of every run: each validation reading follows ``curve(run, step)``."""
    rows = [{"run": run, "step": int(t), **{r.val: curve(run, t) for r in READINGS}}
            for run in runs["run"] for t in STEPS]
    return pd.DataFrame(rows)


def test_convergence_tells_a_fall_from_noise_and_a_rise():
    rng = np.random.default_rng(0)
    r = READINGS[-1]
    curves = {
        "flat": lambda t: 0.2,
        "falling": lambda t: 0.2 * (1 + 0.5 * (1 - t / 4500)),  # 10 % lower over the tail: still improving
        "noisy": lambda t: 0.2 * (1 + 0.05 * rng.standard_normal()),  # ±5 % around a level: converged
        "rising": lambda t: 0.2 * (1 + t / 4500),  # overfitting: no longer improving
        "small_fall": lambda t: 0.2 * (1 + 0.05 * (1 - t / 4500)),  # 1 % over the tail: within FLAT_REL
    }
    ev = pd.DataFrame([{"run": k, "step": int(t), r.val: f(t)} for k, f in curves.items() for t in STEPS])
    c = convergence(ev, r).set_index("run")
    assert yes(c.loc["flat", "flat"]) and yes(c.loc["noisy", "flat"]) and yes(c.loc["rising", "flat"])
    assert yes(c.loc["small_fall", "flat"])
    assert no(c.loc["falling", "flat"]) and c.loc["falling", "drop_rel"] > FLAT_REL
    # a curve with no point in the window's second half: not measured
    assert convergence(ev[ev.step <= 4000], r).set_index("run").loc["flat", "flat"] is not None
    assert convergence(pd.DataFrame({"run": ["x"], "step": [10], r.val: [None]}), r)["flat"].item() is None


def test_convergence_flag_uses_the_worst_seed(runs):
    falling = "latent_ode-30-0.0-3"
    ev = _evals(runs, lambda run, t: 0.2 * (1 + 0.5 * (1 - t / 4500)) if run == falling else 0.2)
    row = table2(runs, ev).query("reading == 'b_clean' and model == 'latent_ode' and n_obs == 30").iloc[0]
    assert no(row.flat) and row.flat_seeds == 4 and row.val_drop_last20 > FLAT_REL
    ok = table2(runs, _evals(runs)).query("reading == 'b_clean' and model == 'latent_ode' and n_obs == 30").iloc[0]
    assert yes(ok.flat) and ok.flat_seeds == 5
    # without evaluation records: not measured, never "flat"
    assert table2(runs).query("reading == 'b_clean'")["flat"].isna().all()


def test_markdown_states_definitions_verdicts_and_choices(runs):
    md = table2_markdown(table2(runs, _evals(runs)), noise_std=0.1, commit="abc1234")
    for r in READINGS:
        assert r.title in md
    assert "0.1400 [0.1000–0.5000]" in md and "0.3937" in md and "abc1234" in md
    assert "At every n: no.**" in md and "n = 30: yes; n = 50: no" in md
    assert "Latent ODE n = 50: no (4.66×)" in md
    assert "1.5e-8" in md and "| b_clean | 30 | 0.1400 | 0.1410 |" in md
    assert "| b_clean | RNN | 30 | 0.5 | 2 | 0.3000 |" in md  # the choice and what made it
    assert "| b_clean | Latent ODE | 30 | 0.000 | 5/5 | yes |" in md  # the convergence check, per seed


def test_records_without_the_readings_are_refused():
    df = pd.DataFrame([{"budget.name": "cpu", "model.name": "rnn", "data.n_obs": 30, "seed": 0, "test_rmse": 0.4}])
    with pytest.raises(KeyError, match="test_rmse_window_noisy"):
        table2(df)

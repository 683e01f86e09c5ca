"""The Poisson-process latent ODE (paper §5.1): the thinning sampler, the likelihood, Λ by the solver, padded
encoding, the tuple state through the adjoints, bad input, and the experiment end to end at the smoke budget."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.linalg import expm

import ndode
from ndode.data.spiral_events import EventRate, make_spiral_events, thinning
from ndode.experiments import latent_poisson  # noqa: E402
from ndode.models.latent_ode import (
    PoissonLatentODE,
    RecognitionRNN,
    latent_ode_elbo,
    poisson_log_likelihood,
    union_of_event_times,
)

D = torch.float64


# ------------------------------------------------------------------ data


def test_thinning_counts_match_the_integral_of_the_rate():
    # λ(t) = 3 + 2 sin t on [0.5, 5]: E[N] = ∫ λ = 3·4.5 + 2 (cos 0.5 − cos 5)
    rng = np.random.default_rng(0)
    counts, first_half = [], []
    for _ in range(4000):
        ev = thinning(lambda t: 3 + 2 * np.sin(t), 0.5, 5.0, 5.0, rng)
        assert np.all(np.diff(ev) >= 0) and (ev.size == 0 or (ev[0] >= 0.5 and ev[-1] <= 5.0))
        counts.append(len(ev))
        first_half.append(int((ev <= 2.75).sum()))
    for c, expect in ((counts, 3 * 4.5 + 2 * (math.cos(0.5) - math.cos(5.0))),
                      (first_half, 3 * 2.25 + 2 * (math.cos(0.5) - math.cos(2.75)))):
        c = np.asarray(c, dtype=float)
        se = c.std(ddof=1) / math.sqrt(len(c))
        assert abs(c.mean() - expect) < 3 * se, (c.mean(), expect, se)
    # and a Poisson count's variance equals its mean (to a few percent at 4000 draws)
    assert abs(np.var(counts, ddof=1) / np.mean(counts) - 1) < 0.1


def test_spiral_events_are_deterministic_and_their_counts_follow_the_true_rate():
    rate = EventRate(8.0, 40.0, 2.0)
    a = make_spiral_events(60, rate, seed=3, split="val")
    b = make_spiral_events(60, rate, seed=3, split="val")
    assert torch.equal(a.times, b.times) and torch.equal(a.x, b.x) and torch.equal(a.clean, b.clean)
    assert not torch.equal(a.theta0, make_spiral_events(60, rate, seed=3, split="test").theta0)
    assert int(a.clockwise.sum()) == 30 and bool((a.lengths >= 1).all())
    # events lie in the window, sorted; padding beyond each length is zero
    m = a.mask
    assert bool((a.times[m] <= a.t_window).all()) and bool((a.future_times[a.future_mask] > a.t_window).all())
    assert bool((a.times.diff(dim=1)[m[:, 1:]] >= 0).all()) and bool((a.times[~m] == 0).all())
    # the true rate on the grid is the rate of the clean spiral; the observations sit near the true points
    assert torch.allclose(a.true_rate(a.t.expand(len(a), -1)), a.rate(a.clean.double()), rtol=1e-5)
    assert float((a.x[m] - a.clean.new_tensor(0)).abs().max()) < 30
    # counts over all sequences: within 3 standard errors of Σ ∫ λ (a sum of Poisson counts has variance = mean)
    expect = float(a.true_integral(0.0, a.t_window).sum())
    assert abs(float(a.lengths.sum()) - expect) < 3 * math.sqrt(expect)


# ------------------------------------------------------------------ likelihood and Λ


def test_poisson_log_likelihood_of_a_constant_rate_matches_its_closed_form():
    lam, t_end = 2.5, 3.0
    times = torch.tensor([[0.3, 1.1, 2.9, 0.0], [0.5, 0.0, 0.0, 0.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    closed = torch.tensor([3 * math.log(lam) - lam * t_end, math.log(lam) - lam * t_end], dtype=D)
    ll = poisson_log_likelihood(torch.full_like(times, math.log(lam)), mask, torch.full((2,), lam * t_end, dtype=D))
    assert torch.allclose(ll, closed, rtol=0, atol=1e-12)
    # the same through the model: a rate network with zero weights and bias log λ, Λ integrated by the solver
    model = PoissonLatentODE().double()
    with torch.no_grad():
        for p in model.log_rate.parameters():
            p.zero_()
        model.log_rate.net[-1].bias.fill_(math.log(lam))
    res = model.solve_events(torch.randn(2, 4, dtype=D), times, mask, t_end, rtol=1e-9, atol=1e-9)
    ll_model = poisson_log_likelihood(res["log_rate"], mask, res["Lambda_end"])
    assert torch.allclose(ll_model, closed, rtol=0, atol=1e-9)
    # a sequence with no events scores −Λ: not seeing any is evidence too
    none = poisson_log_likelihood(torch.zeros(1, 2, dtype=D), torch.zeros(1, 2, dtype=torch.bool),
                                  torch.tensor([lam * t_end], dtype=D))
    assert float(none) == pytest.approx(-lam * t_end)


class Rotation(torch.nn.Module):
    """dz/dt = A z with A fixed: z(t) = expm(A t) z0 in closed form."""

    A = np.array([[-0.1, 1.0, 0, 0], [-1.0, -0.1, 0, 0], [0, 0, -0.3, 0.5], [0, 0, -0.5, -0.3]])

    def forward(self, t, z):
        return z @ torch.as_tensor(self.A, dtype=z.dtype).T


@pytest.mark.slow
def test_lambda_integrated_by_the_solver_matches_quadrature_on_a_fixed_trajectory():
    torch.manual_seed(0)
    model = PoissonLatentODE().double()
    model.dynamics = Rotation()  # a trajectory known in closed form
    z0 = torch.randn(3, 4, dtype=D)
    times = torch.tensor([[0.4, 1.7, 2.2], [1.0, 2.5, 0.0], [3.0, 0.0, 0.0]], dtype=D)
    mask = times > 0
    with torch.no_grad():
        res = model.solve_events(z0, times, mask, 4.0, rtol=1e-10, atol=1e-10)

    def rate_at(b, t):
        z = torch.as_tensor(expm(Rotation.A * t) @ z0[b].numpy())
        with torch.no_grad():
            return float(model.rate(z))

    for b in range(3):
        ref = quad(lambda t: rate_at(b, t), 0.0, 4.0, epsabs=1e-11, epsrel=1e-11)[0]
        assert float(res["Lambda_end"][b]) == pytest.approx(ref, rel=1e-8)
        for k in range(3):
            if mask[b, k]:
                tk = float(times[b, k])
                assert float(res["Lambda"][b, k]) == pytest.approx(quad(lambda t: rate_at(b, t), 0.0, tk,
                                                                        epsabs=1e-11, epsrel=1e-11)[0], rel=1e-8)
                z_true = expm(Rotation.A * tk) @ z0[b].numpy()
                assert np.allclose(res["z"][b, k].detach().numpy(), z_true, atol=1e-8)


def test_union_of_event_times_reads_each_sequence_back():
    times = torch.tensor([[0.2, 0.9, 0.0], [0.9, 1.3, 1.5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    u, pos = union_of_event_times(times, mask, 0.0, 2.0)
    assert u.tolist() == pytest.approx([0.0, 0.2, 0.9, 1.3, 1.5, 2.0])
    assert torch.equal(u[pos][mask], times[mask])
    with pytest.raises(ValueError, match=r"outside the solve's \[t0=0.0, t_end=1.4\]"):
        union_of_event_times(times, mask, 0.0, 1.4)


# ------------------------------------------------------------------ model


def test_padded_sequences_encode_as_each_sequence_alone():
    torch.manual_seed(1)
    enc = RecognitionRNN().double()
    lengths = torch.tensor([3, 5, 1])
    x, t = torch.randn(3, 5, 2, dtype=D), torch.rand(3, 5, dtype=D)
    x_junk, t_junk = x.clone(), t.clone()
    for b, n in enumerate(lengths):  # padding may hold anything: it must not be read
        x_junk[b, n:], t_junk[b, n:] = 1e6, float("nan")
    mean, logvar = enc(x_junk, t_junk, lengths)
    for b, n in enumerate(lengths):
        m1, lv1 = enc(x[b:b + 1, :n], t[b:b + 1, :n])
        assert torch.allclose(mean[b], m1[0], atol=1e-12) and torch.allclose(logvar[b], lv1[0], atol=1e-12)
    with pytest.raises(ValueError, match="needs at least one observation"):
        enc(x, t, torch.tensor([3, 0, 1]))


def _elbo_grads(model, data, adjoint):
    model.zero_grad()
    mean, logvar = model.encode(data.x.double(), data.times.double(), data.lengths)
    z0 = mean + 0.1 * torch.exp(0.5 * logvar)  # a fixed "sample": the comparison needs no noise
    res = model.solve_events(z0, data.times.double(), data.mask, data.t_window, rtol=1e-10, atol=1e-10,
                             method="dopri5", adjoint=adjoint)
    ll = poisson_log_likelihood(res["log_rate"], data.mask, res["Lambda_end"])
    elbo = latent_ode_elbo(data.x.double(), data.mask, model.decoder(res["z"]), mean, logvar, 0.1, ll)["elbo"]
    (-elbo).backward()
    return [p.grad.clone() for p in model.parameters()], res["stats"]


def test_the_tuple_state_through_either_adjoint_gives_direct_backprops_gradients():
    torch.manual_seed(2)
    data = make_spiral_events(6, EventRate(3.0, 10.0, 2.0), seed=1, split="val")
    model = PoissonLatentODE().double()
    direct, _ = _elbo_grads(model, data, None)
    ck, _ = _elbo_grads(model, data, ndode.CheckpointAdjoint())
    back, stats = _elbo_grads(model, data, ndode.BacksolveAdjoint(rtol=1e-10, atol=1e-10))
    assert stats.nfe_backward > 0
    for a, b, c in zip(direct, ck, back):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)  # the same discrete solve, differentiated exactly
        # the continuous adjoint: equal up to the solves' errors
        assert float((a - c).norm() / a.norm()) < 1e-5, float((a - c).norm() / a.norm())


def test_without_the_poisson_term_the_state_is_z_alone():
    model = PoissonLatentODE(poisson=False)
    assert not hasattr(model, "log_rate") and model.ode_func is model.dynamics
    data = make_spiral_events(4, seed=0, split="test")
    res = model.solve_events(torch.zeros(4, 4), data.times, data.mask, data.t_window)
    assert res["z"].shape == (4, data.times.shape[1], 4) and res["Lambda_end"] is None
    with pytest.raises(ValueError, match="poisson=False"):
        model.rate(torch.zeros(1, 4))


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs, name", [({"rate_min": 0.0}, "rate_min=0.0"), ({"rate_max": -1.0}, "rate_max=-1.0"),
                                          ({"rate_scale": float("nan")}, "rate_scale=nan"),
                                          ({"rate_min": 5.0, "rate_max": 2.0}, "rate_max=2.0 must be >= rate_min")])
def test_a_rate_that_is_not_positive_is_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EventRate(**kwargs)


def test_thinning_refuses_a_rate_outside_its_bound():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"outside \(0, bound=2.0\]: the rate must be positive"):
        thinning(lambda t: np.sin(t), 0.0, 10.0, 2.0, rng)
    with pytest.raises(ValueError, match="outside"):
        thinning(lambda t: 3.0 + 0 * t, 0.0, 10.0, 2.0, rng)


def test_an_empty_event_sequence_is_refused_naming_the_rate():
    with pytest.raises(ValueError, match=r"no events in the observation window .* raise rate_min=0.01"):
        make_spiral_events(20, EventRate(0.01, 0.02, 1.0), seed=0)


# ------------------------------------------------------------------ the experiment


pytest.importorskip("hydra")
from _support import compose_config, load_script  # noqa: E402
from hydra.errors import ConfigCompositionException  # noqa: E402

from ndode.harness import ConfigError, run_experiment  # noqa: E402


@pytest.mark.parametrize("override, words", [
    ("data.rate_min=0", ["data.rate_min=0.0", "> 0"]),
    ("data.rate_scale=-1", ["data.rate_scale=-1.0", "> 0"]),
    ("data.rate_max=4", ["data.rate_max=4.0 must be >= data.rate_min=8.0"]),
    # too low for the window: a sequence without events, which the recognition network cannot read
    ("data.rate_max=0.01", ["data.rate_min=0.01", "no events in the observation window", "raise rate_min"]),
])
def test_bad_rate_options_are_named_and_leave_nothing_behind(override, words, tmp_path):
    extra = ["data.rate_min=0.01"] if override == "data.rate_max=0.01" else []
    cfg = compose_config("latent_poisson", override, *extra, "budget=smoke", "quiet=true", f"run_root={tmp_path}",
                         *SMALL)
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, latent_poisson.PoissonTask, run_dir=tmp_path / "run")
    for w in words:
        assert w in str(err.value), str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, override, words", [
    ("latent_ode", "model=latent_poisson", "Invalid value 'latent_poisson', expected one of [latent_ode, rnn, rnn_dt]"),
    ("latent_poisson", "model=rnn", "Invalid value 'rnn', expected one of [latent_poisson]"),
])
def test_the_models_do_not_cross_configs(name, override, words, tmp_path):
    """Each experiment's schema knows its own models: the other's is refused when the config is composed."""
    with pytest.raises(ConfigCompositionException) as e:
        compose_config(name, override, "budget=smoke", "quiet=true", f"run_root={tmp_path}")
    assert words in str(e.value) and "model.name" in str(e.value)


SMALL = ("data.n_train=64", "data.n_val=16", "data.n_test=16")  # the smoke budget reads no more than these


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Smoke runs with the Poisson term on (seeds 0, 1) and off (seed 0), as `make reproduce-poisson` names them."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for poisson, seed in ((True, 0), (True, 1), (False, 0)):
        cfg = compose_config("latent_poisson", "budget=smoke", "quiet=true", f"model.poisson={poisson}",
                             f"seed={seed}", f"run_root={root}", *SMALL)
        assert cfg.solver.adjoint.name == "checkpoint"  # (z, Λ) in one adjoint solve
        run_dir = root / "latent_poisson" / f"budget=smoke,model.poisson={poisson},seed={seed}"
        runs[(poisson, seed)] = (run_experiment(cfg, latent_poisson.PoissonTask, run_dir=run_dir), run_dir)
    return root, runs


@pytest.mark.parametrize("poisson", [True, False])
@pytest.mark.slow
def test_smoke_run_end_to_end(poisson, smoke_runs):
    s, run_dir = smoke_runs[1][(poisson, 0)]
    assert (run_dir / "done").exists() and s["poisson"] is poisson
    assert np.isfinite(s["test_rmse_extrap_clean"]) and s["nfe_backward"] > 0
    train = [r for r in map(json.loads, open(run_dir / "metrics.jsonl")) if r["kind"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    a = dict(np.load(run_dir / "arrays" / "poisson.npz"))
    assert a["true_rate"].shape == a["x_pred"].shape[:2]
    if poisson:
        assert "log_lik_times" in train[-1] and a["rate"].shape == a["true_rate"].shape
        for k in ("test_event_ll", "test_true_ll", "test_homogeneous_ll", "test_rate_rel_l2",
                  "test_homogeneous_rate_rel_l2", "test_event_ll_future"):
            assert np.isfinite(s[k]), k
        # the baseline's rate is the training MLE: events per unit time of the training windows
        assert 8.0 < s["homogeneous_rate"] < 40.0
    else:
        assert "test_event_ll" not in s and "rate" not in a


@pytest.mark.slow
def test_table_and_figure_7_from_the_records(smoke_runs, tmp_path):
    from ndode.harness import load_runs
    from ndode.report.latent_ode import plot_fig7, poisson_claims, poisson_markdown, poisson_table

    root, runs = smoke_runs
    table = poisson_table(load_runs(root))
    assert table["poisson"].tolist() == [True, False] and table["n_seeds"].tolist() == [2, 1]
    on = table.iloc[0]
    lls = [runs[(True, s)][0]["test_event_ll"] for s in (0, 1)]
    assert on["test_event_ll_mean"] == pytest.approx(np.mean(lls))
    assert on["test_event_ll_std"] == pytest.approx(np.std(lls, ddof=1))
    assert on["test_homogeneous_ll_std"] == pytest.approx(0.0, abs=1e-9)  # the baseline does not depend on the run
    md = poisson_markdown(table)
    assert "homogeneous Poisson" in md and f"{on['test_event_ll_mean']:.2f} ± {on['test_event_ll_std']:.2f}" in md
    claims = poisson_claims(on.to_dict())
    assert claims["window log-likelihood"] == bool(on["test_event_ll_mean"] > on["test_homogeneous_ll_mean"])
    fig = plot_fig7(dict(np.load(runs[(True, 0)][1] / "arrays" / "poisson.npz")))
    assert len(fig.axes) == 8
    # the scripts: table, figure (found by the run's config, not its name)
    for script in ("make_tables", "make_figures"):
        assert load_script(script).main(["--runs", str(root), "--out", str(tmp_path / script), "--experiment",
                                         "latent_poisson", "--budget", "smoke"]) == 0
    assert (tmp_path / "make_tables" / "tables" / "latent_poisson.md").exists()
    assert (tmp_path / "make_figures" / "latent_fig7.png").exists()

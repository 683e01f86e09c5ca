"""The latent-ODE experiment's parts: spiral data, masks, the ELBO, the union-of-times solve, the RMSE, the RNNs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ndode
from ndode.data.spiral_events import EventRate, make_spiral_events
from ndode.data.spirals import (
    HELD_OUT_MARGIN,
    draw_windows,
    make_spirals,
    spiral_readings,
    subsample_indices,
    window_starts,
)
from ndode.models.latent_ode import (
    LatentODE,
    gaussian_log_likelihood,
    kl_standard_normal,
    latent_ode_elbo,
    union_of_times,
)
from ndode.models.rnn import RNNBaseline, interpolate_knots, rnn_nll


# ---- data
def test_spirals_shapes_halves_and_noise():
    d = make_spirals(40, n_obs=30, noise_std=0.1, seed=0, split="train")
    assert d.t.shape == (200,) and d.t[0] == 0 and bool((d.t[1:] > d.t[:-1]).all())
    assert d.clean.shape == d.noisy.shape == (40, 200, 2)
    assert d.obs_idx.shape == (40, 30) and d.mask.shape == (40, 100) and d.n_extrap == 100
    assert int(d.clockwise.sum()) == 20  # exactly half clockwise
    assert abs(float((d.noisy - d.clean).std()) - 0.1) < 0.005  # 16,000 noise draws
    x, t = d.observed()
    assert x.shape == (40, 30, 2) and t.shape == (40, 30)
    assert torch.equal(x[3], d.noisy[3, d.obs_idx[3]]) and torch.equal(t[3], d.t[d.obs_idx[3]])
    starts = {tuple(p) for p in d.clean[:, 0].tolist()}
    assert len(starts) == 40  # each spiral starts at a different point


def _winding(points: torch.Tensor, centre: tuple[float, float]) -> torch.Tensor:
    """z-component of (p_i - c) x (p_{i+1} - c): positive for counter-clockwise motion around c."""
    p = points - torch.tensor(centre, dtype=points.dtype)
    return p[:-1, 0] * p[1:, 1] - p[:-1, 1] * p[1:, 0]


def test_spirals_turn_the_stated_direction():
    d = make_spirals(20, n_obs=10, noise_std=0.1, seed=3, split="test")
    for i in range(len(d)):
        if d.clockwise[i]:  # clockwise spirals wind around (-5, 0), counter-clockwise ones around (+5, 0)
            assert bool((_winding(d.clean[i], (-5.0, 0.0)) < 0).all()), i
        else:
            assert bool((_winding(d.clean[i], (5.0, 0.0)) > 0).all()), i


def test_spirals_are_deterministic_given_seed_and_split():
    a = make_spirals(30, n_obs=50, noise_std=0.2, seed=7, split="val")
    b = make_spirals(30, n_obs=50, noise_std=0.2, seed=7, split="val")
    for k in ("t", "clean", "noisy", "clockwise", "obs_idx"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert not torch.equal(a.noisy, make_spirals(30, n_obs=50, noise_std=0.2, seed=8, split="val").noisy)
    assert not torch.equal(a.clean, make_spirals(30, n_obs=50, noise_std=0.2, seed=7, split="test").clean)
    # the observation count changes only which points are kept, not the spirals
    c = make_spirals(30, n_obs=30, noise_std=0.2, seed=7, split="val")
    assert torch.equal(a.noisy, c.noisy) and not torch.equal(a.obs_idx[:, :30], c.obs_idx)


# ---- held-out spirals lie inside what training observes (issue 23)
def test_held_out_windows_lie_inside_the_training_windows_span():
    n_window, n_extrap, n_grid = 100, 100, 1000
    lo, hi = window_starts("train", n_window, n_extrap, n_grid)
    assert (lo, hi) == (100, 800)  # torchdiffeq's lower end; room for the extrapolation points
    span = (lo, hi - 1 + n_window - 1)  # grid indices the training observation windows cover: [100, 898]
    for split in ("val", "test"):
        h_lo, h_hi = window_starts(split, n_window, n_extrap, n_grid)
        first, last = h_lo, h_hi - 1 + n_window + n_extrap - 1  # a held-out window's first and last point
        assert first == span[0] + HELD_OUT_MARGIN and last == span[1] - HELD_OUT_MARGIN
        rng = np.random.default_rng(0)
        _, start = draw_windows(5000, n_window, n_extrap, n_grid, rng, split)
        assert start.min() == h_lo and start.max() == h_hi - 1  # uniform over the whole range, nothing outside
    # the old rule (one range for every split) let held-out spirals extrapolate past the training span
    assert window_starts("train", n_window, n_extrap, n_grid)[1] - 1 + n_window + n_extrap - 1 > span[1]
    with pytest.raises(ValueError, match="n_grid=400.*raise n_grid"):
        window_starts("test", n_window, n_extrap, 400)
    with pytest.raises(ValueError, match="split='dev'"):
        window_starts("dev", n_window, n_extrap, n_grid)


def _observed_span(start, offsets, clockwise, direction):
    """Per direction, the lowest and highest reference-grid position any training spiral observes."""
    rows = clockwise == direction
    pos = start[rows, None] + offsets[rows]
    return float(pos.min()), float(pos.max())


@pytest.mark.parametrize("n_obs", [30, 50, 100])
def test_no_held_out_spiral_extrapolates_outside_the_observed_training_range(n_obs):
    # the experiment's splits (data.seed 0: 1000 training, 200 validation and 200 test spirals): every held-out
    # grid point, window and extrapolation, lies between the lowest and highest reference-grid index that a
    # training spiral of the same direction actually observes (its n_obs kept points, not just its window)
    train = make_spirals(1000, n_obs=n_obs, noise_std=0.1, seed=0, split="train")
    for direction in (True, False):
        lo, hi = _observed_span(train.start.numpy(), train.obs_idx.numpy(), train.clockwise.numpy(), direction)
        for split in ("val", "test"):
            d = make_spirals(200, n_obs=n_obs, noise_std=0.1, seed=0, split=split)
            rows = (d.clockwise == direction).numpy()
            first, last = d.start.numpy()[rows], d.start.numpy()[rows] + len(d.t) - 1
            assert first.min() >= lo and last.max() <= hi, (split, direction, lo, hi, first.min(), last.max())
            # and the windows really reach towards both ends (the margin is not a large chunk of the range)
            assert last.max() >= hi - 3 * HELD_OUT_MARGIN


def test_poisson_events_of_held_out_spirals_stay_inside_the_observed_training_range():
    # the Poisson variant draws its windows with the same rule; training observes its spirals at event times
    rate = EventRate()
    train = make_spiral_events(1000, rate, seed=0, split="train")
    grid_dt = float(train.t[1] - train.t[0])
    start = (train.theta0 / grid_dt).round().numpy()  # window start on the reference grid
    pos = train.times.double().numpy() / grid_dt  # event positions inside each window, in grid steps
    pos = np.where(train.mask.numpy(), pos, np.nan)
    for direction in (True, False):
        rows = train.clockwise.numpy() == direction
        lo, hi = np.nanmin(start[rows, None] + pos[rows]), np.nanmax(start[rows, None] + pos[rows])
        for split in ("val", "test"):
            d = make_spiral_events(200, rate, seed=0, split=split)
            s = (d.theta0 / grid_dt).round().numpy()[(d.clockwise == direction).numpy()]
            assert s.min() >= lo and s.max() + len(d.t) - 1 <= hi, (split, direction)


@pytest.mark.parametrize("n_obs", [1, 30, 100])
def test_subsampling_is_sorted_unique_within_the_window(n_obs):
    d = make_spirals(50, n_obs=n_obs, noise_std=0.1, seed=1)
    idx = d.obs_idx
    assert idx.shape == (50, n_obs) and int(idx.min()) >= 0 and int(idx.max()) < 100
    assert bool((idx[:, 1:] > idx[:, :-1]).all())  # sorted and unique
    assert int(d.mask.sum()) == 50 * n_obs
    if n_obs == 30:  # irregular: different times per spiral
        assert len({tuple(r) for r in idx.tolist()}) == 50
    if n_obs == 100:
        assert torch.equal(idx, torch.arange(100).expand(50, -1))


@pytest.mark.parametrize("kwargs, option", [
    (dict(n_obs=101), "n_obs"), (dict(n_obs=0), "n_obs"), (dict(noise_std=0.0), "noise_std"),
    (dict(noise_std=-0.1), "noise_std"), (dict(noise_std=float("nan")), "noise_std"), (dict(split="dev"), "split"),
])
def test_bad_data_arguments_name_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        make_spirals(10, **{"n_obs": 10, "noise_std": 0.1, **kwargs})
    if option == "n_obs":
        with pytest.raises(ValueError, match="n_obs"):
            subsample_indices(3, 100, kwargs["n_obs"], np.random.default_rng(0))


# ---- likelihood, KL, masks
def test_kl_term_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(kl_standard_normal(mean, logvar), expected)
    # KL(N(μ, σ²) ‖ N(0, 1)) = (σ² + μ² − 1 − log σ²)/2 for one dimension, by hand
    assert kl_standard_normal(torch.tensor([[1.0]]), torch.tensor([[math.log(4.0)]])).item() == pytest.approx(
        0.5 * (4 + 1 - 1 - math.log(4)))
    assert kl_standard_normal(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0


def test_gaussian_log_likelihood_and_elbo_terms():
    g = torch.Generator().manual_seed(1)
    x, mu = torch.randn(3, 5, 2, generator=g, dtype=torch.float64), torch.randn(3, 5, 2, generator=g, dtype=torch.float64)
    expected = torch.distributions.Normal(mu, 0.3).log_prob(x).sum((1, 2))
    torch.testing.assert_close(gaussian_log_likelihood(x, mu, 0.3), expected)
    mean, logvar = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.bool)
    terms = latent_ode_elbo(x, mask, mu, mean, logvar, 0.3)
    torch.testing.assert_close(terms["elbo"], (expected - kl_standard_normal(mean, logvar)).mean())


def test_masks_hide_unobserved_points_from_the_loss():
    d = make_spirals(8, n_obs=30, noise_std=0.1, seed=0)
    g = torch.Generator().manual_seed(2)
    x = d.noisy[:, :100].clone()
    pred = x + 0.1 * torch.randn(x.shape, generator=g)
    mean, logvar = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    base = latent_ode_elbo(x, d.mask, pred, mean, logvar, 0.1)["elbo"]
    hidden = ~d.mask
    x2, pred2 = x.clone(), pred.clone()
    x2[hidden] = 1e6  # anything at unobserved points, even non-finite values, leaves the loss unchanged
    pred2[hidden] = float("nan")
    assert latent_ode_elbo(x2, d.mask, pred2, mean, logvar, 0.1)["elbo"].item() == base.item()
    x3 = x.clone()
    x3[d.mask] += 1.0  # while an observed point does change it
    assert latent_ode_elbo(x3, d.mask, pred, mean, logvar, 0.1)["elbo"].item() != base.item()


# ---- the union-of-times solve
def test_union_of_times_indexes_each_grid_time():
    idx = torch.tensor([[2, 5, 7], [1, 5, 9]])
    u, pos = union_of_times(idx, 12)
    assert u.tolist() == [0, 1, 2, 5, 7, 9]
    for i in u.tolist():
        assert int(u[pos[i]]) == i
    with pytest.raises(ValueError, match="n_grid"):
        union_of_times(idx, 9)


def test_union_solve_gives_each_spiral_its_own_solve():
    torch.manual_seed(0)
    model = LatentODE().double()
    with torch.no_grad():  # non-trivial dynamics
        for p in model.dynamics.parameters():
            p.mul_(3.0)
    d = make_spirals(5, n_obs=12, noise_std=0.1, seed=4)
    t = d.t[:100].double()
    z0 = torch.randn(5, 4, dtype=torch.float64)
    kw = dict(rtol=1e-10, atol=1e-10, method="dopri5")
    z, _ = model.trajectory(z0, t, d.obs_idx, **kw)
    assert z.shape == (5, 100, 4)
    for b in range(5):
        own = torch.cat([torch.zeros(1, dtype=torch.long), d.obs_idx[b]])
        own = torch.unique(own)
        alone = ndode.odeint(model.dynamics, z0[b], t[own], **kw)  # [len(own), 4]
        # equal to the solvers' accuracy (dense output between steps); a neighbouring grid time is ~1e-2 away
        torch.testing.assert_close(z[b, own], alone, rtol=1e-6, atol=1e-6)
        assert (z[b, own[1:]] - alone[:-1]).abs().max() > 1e-3


def test_union_solve_with_the_adjoint_matches_direct_gradients():
    torch.manual_seed(1)
    model = LatentODE().double()
    d = make_spirals(6, n_obs=20, noise_std=0.1, seed=5)
    x, t = d.observed()
    kw = dict(rtol=1e-9, atol=1e-9, method="dopri5")
    grads = []
    for adjoint in (False, True):
        torch.manual_seed(2)  # the same z0 sample
        res = model(x.double(), t.double(), d.t[:100].double(), d.obs_idx,
                    adjoint=ndode.BacksolveAdjoint() if adjoint else None, **kw)
        loss = -latent_ode_elbo(d.noisy[:, :100].double(), d.mask, res["x_pred"], res["qz0_mean"],
                                res["qz0_logvar"], 0.1)["elbo"]
        model.zero_grad()
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    # measured: 1e-6 apart in norm (entries up to 4e-4 relative: direct backprop differentiates the dense output)
    assert float((grads[1] - grads[0]).norm() / grads[0].norm()) < 1e-5


# ---- the readings: one scoring function for every model
def test_readings_score_the_window_and_the_extrapolation_separately():
    clean = torch.zeros(4, 200, 2)
    noisy = torch.full((4, 200, 2), 0.1)
    pred = torch.zeros(4, 200, 2)
    pred[:, :100] = 0.3  # window error 0.3 against the clean points, 0.2 against the noisy ones
    pred[:, 100:] = 0.5
    pred[:, 150:, 0] = 1.5  # coordinate 0: errors 0.5 on half the points, 1.5 on the other half; coordinate 1: 0.5
    r = spiral_readings(pred, clean, noisy, 100)
    assert list(r) == ["rmse_window_noisy", "rmse_window_clean", "rmse_extrap_clean", "rmse_extrap_noisy"]
    assert r["rmse_window_clean"] == pytest.approx(0.3) and r["rmse_window_noisy"] == pytest.approx(0.2)
    assert r["rmse_extrap_clean"] == pytest.approx(math.sqrt((0.25 + 2.25 + 2 * 0.25) / 4))
    assert r["rmse_extrap_noisy"] == pytest.approx(math.sqrt((0.16 + 1.96 + 2 * 0.16) / 4))
    # pooled over spirals (not a mean of per-spiral RMSEs): one bad spiral of four
    pred2 = torch.zeros(4, 200, 2)
    pred2[0, 100:] = 2.0
    assert spiral_readings(pred2, clean, None, 100) == {"rmse_window_clean": 0.0,
                                                        "rmse_extrap_clean": pytest.approx(1.0)}
    with pytest.raises(ValueError, match="n_window"):
        spiral_readings(pred, clean, noisy, 200)
    with pytest.raises(ValueError, match="shape"):
        spiral_readings(pred[:, :150], clean, noisy, 100)


# ---- the RNN baselines
def test_interpolate_knots_is_piecewise_linear_and_flat_outside():
    tk = torch.tensor([[0.5, 1.0, 3.0], [0.0, 2.0, 2.5]])
    xk = torch.tensor([[[1.0], [2.0], [0.0]], [[0.0], [4.0], [5.0]]])
    t = torch.tensor([0.0, 0.75, 2.0, 2.25, 4.0])
    out = interpolate_knots(tk, xk, t)[..., 0]
    for b in range(2):
        expected = np.interp(t.numpy(), tk[b].numpy(), xk[b, :, 0].numpy())  # numpy's: flat outside, too
        np.testing.assert_allclose(out[b].numpy(), expected, rtol=0, atol=1e-6)


def test_rnn_grid_predictions_are_causal_and_start_at_the_first_observation():
    torch.manual_seed(0)
    d = make_spirals(4, n_obs=20, noise_std=0.1, seed=0)
    x, t = d.observed()
    for time_gap in (False, True):
        m = RNNBaseline(time_gap=time_gap)
        m.set_rollout_step(t)
        pred = m.predict_grid(x, t, d.t)
        assert pred.shape == (4, 200, 2) and bool(torch.isfinite(pred).all())
        for b in range(4):
            first = int(d.obs_idx[b, 0])
            assert torch.equal(pred[b, :first + 1], x[b, :1].expand(first + 1, -1))  # up to t_1: x_1 itself
        # the value at an observation time is its one-step prediction from the points before it, never the point:
        # changing observations 10.. leaves every grid point up to observation 10's time unchanged
        x2 = x.clone()
        x2[:, 10:] += 1.0
        pred2 = m.predict_grid(x2, t, d.t)
        for b in range(4):
            k = int(d.obs_idx[b, 10])
            assert torch.equal(pred[b, :k + 1], pred2[b, :k + 1]) and not torch.equal(pred[b, k + 1:], pred2[b, k + 1:])
        # the time-gap RNN's predictions depend on the times, the plain one's only through where knots are placed
        _, xk = m.knots(x, 2 * t, float(2 * d.t[-1]))
        _, xk1 = m.knots(x, t, float(d.t[-1]))
        n_same = min(xk.shape[1], xk1.shape[1])
        assert torch.equal(xk[:, :n_same], xk1[:, :n_same]) != time_gap


def test_rnn_rolls_out_at_its_training_resolution():
    d = make_spirals(50, n_obs=30, noise_std=0.1, seed=2)
    x, t = d.observed()
    m = RNNBaseline()
    with pytest.raises(RuntimeError, match="set_rollout_step"):
        m.predict_grid(x, t, d.t)
    dt = m.set_rollout_step(t)
    grid_dt = float(d.t[1] - d.t[0])
    # 30 of 100 window points: the mean gap between consecutive observations is about 100/31 grid steps
    assert 2.8 * grid_dt < dt < 3.6 * grid_dt and dt == pytest.approx(float((t[:, 1:] - t[:, :-1]).mean()))
    assert float(m.rollout_dt) == dt and "rollout_dt" in m.state_dict()  # checkpointed with the weights
    tk, xk = m.knots(x, t, float(d.t[-1]))
    future = tk[:, 30:]
    torch.testing.assert_close(future[:, 1:] - future[:, :-1], torch.full_like(future[:, 1:], dt))
    torch.testing.assert_close(future[:, 0], t[:, -1] + dt)
    assert bool((future[:, -1] >= d.t[-1]).all()) and bool((future[:, -2] < d.t[-1] + 1e-6).any())
    # the first rollout point is the one-step prediction after the last observation; the next ones feed back
    gaps = torch.cat([t[:, 1:] - t[:, :-1], torch.full((50, 1), dt)], 1)
    with torch.no_grad():
        pred, h = m(x, gaps)
        nxt, _ = m(pred[:, -1:], torch.full((50, 1), dt), h)
    torch.testing.assert_close(xk[:, 30], pred[:, -1])
    torch.testing.assert_close(xk[:, 31], nxt[:, 0])


@pytest.mark.parametrize("time_gap", [False, True])
def test_scheduled_sampling_feeds_back_the_models_own_predictions(time_gap):
    torch.manual_seed(0)
    m = RNNBaseline(time_gap=time_gap).double()
    x = torch.randn(5, 12, 2, dtype=torch.float64)
    gaps = torch.rand(5, 12, dtype=torch.float64)
    teacher, _ = m(x, gaps)
    assert torch.equal(m.scheduled(x, gaps, 0.0)[0], teacher)
    assert torch.equal(m.scheduled(x, gaps, 1e-300)[0], teacher)  # never fed back: teacher forcing
    # feed_prev = 1: every input after the first is the model's (teacher-forced) prediction of it
    fed = torch.cat([x[:, :1], teacher[:, :-1].detach()], 1)
    expected, _ = m(fed, gaps)
    assert torch.equal(m.scheduled(x, gaps, 1.0)[0], expected)
    assert torch.equal(m.scheduled(x, gaps, 1.0)[0][:, 0], teacher[:, 0])  # the first input is always observed
    # feed_prev = 0.5: each input is one of the two, both kinds occur (per sequence and step), about half each
    torch.manual_seed(3)
    mixed, _ = m.scheduled(x, gaps, 0.5)
    torch.manual_seed(3)
    own = torch.rand(5, 12, 1) < 0.5
    own[:, 0] = False
    assert 0.3 < float(own[:, 1:].double().mean()) < 0.7
    expected_mixed, _ = m(torch.where(own, fed, x), gaps)
    assert torch.equal(mixed, expected_mixed) and not torch.equal(mixed, teacher) and not torch.equal(mixed, expected)
    # the gradient flows through the second pass only (the fed-back predictions are data, as in scheduled sampling)
    loss = rnn_nll(m, x, gaps.cumsum(1), 0.1, feed_prev=0.5)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in m.parameters())
    with pytest.raises(ValueError, match="feed_prev=1.5"):
        m.scheduled(x, gaps, 1.5)


def test_rnn_baselines_see_time_gaps_only_when_asked():
    torch.manual_seed(0)
    d = make_spirals(4, n_obs=20, noise_std=0.1, seed=0)
    x, t = d.observed()
    for time_gap in (False, True):
        m = RNNBaseline(time_gap=time_gap)
        loss = rnn_nll(m, x, t, 0.1)
        assert loss.dim() == 0 and torch.isfinite(loss)
        p1, _ = m(x, t)
        p2, _ = m(x, 2 * t)
        assert torch.equal(p1, p2) != time_gap
    # causality: the prediction of point i+1 depends on points <= i only
    m = RNNBaseline(time_gap=True)
    gaps = t[:, 1:] - t[:, :-1]
    pred, _ = m(x[:, :-1], gaps)
    x2 = x.clone()
    x2[:, 10:] += 1.0
    pred2, _ = m(x2[:, :-1], gaps)
    assert torch.equal(pred[:, :10], pred2[:, :10]) and not torch.equal(pred[:, 10:], pred2[:, 10:])

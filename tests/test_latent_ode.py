"""The latent-ODE experiment's parts: spiral data, masks, the ELBO, the union-of-times solve, the RMSE, the RNNs."""

from __future__ import annotations

import math

import pytest
import torch

import ndode
from ndode.data.spirals import extrapolation_rmse, make_spirals, subsample_indices
from ndode.models.latent_ode import (LatentODE, gaussian_log_likelihood, kl_standard_normal, latent_ode_elbo,
                                     union_of_times)
from ndode.models.rnn import RNNBaseline, rnn_nll


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
        import numpy as np

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


# ---- the RMSE
def test_rmse_uses_the_extrapolation_points_only():
    target = torch.zeros(4, 200, 2)
    pred = torch.zeros(4, 200, 2)
    pred[:, :100] = float("nan")  # the window: ignored whatever it holds
    pred[:, 100:] = 0.5
    assert extrapolation_rmse(pred, target, 100) == pytest.approx(0.5)
    pred[:, 150:, 0] = 1.5  # coordinate 0: errors 0.5 on half the points, 1.5 on the other half; coordinate 1: 0.5
    assert extrapolation_rmse(pred, target, 100) == pytest.approx(math.sqrt((0.25 + 2.25 + 2 * 0.25) / 4))
    with pytest.raises(ValueError, match="n_window"):
        extrapolation_rmse(pred, target, 200)


# ---- the RNN baselines
def test_rnn_baselines_see_time_gaps_only_when_asked():
    torch.manual_seed(0)
    d = make_spirals(4, n_obs=20, noise_std=0.1, seed=0)
    x, t = d.observed()
    for time_gap in (False, True):
        m = RNNBaseline(time_gap=time_gap)
        fit, future = m.predict(x, t, d.t[100:])
        assert fit.shape == (4, 19, 2) and future.shape == (4, 100, 2)
        _, future2 = m.predict(x, 2 * t, 2 * d.t[100:])  # the same values at other times
        assert torch.equal(future, future2) != time_gap
        loss = rnn_nll(m, x, t, 0.1)
        assert loss.dim() == 0 and torch.isfinite(loss)
    # causality: the prediction of point i+1 depends on points <= i only
    m = RNNBaseline(time_gap=True)
    gaps = t[:, 1:] - t[:, :-1]
    pred, _ = m(x[:, :-1], gaps)
    x2 = x.clone()
    x2[:, 10:] += 1.0
    pred2, _ = m(x2[:, :-1], gaps)
    assert torch.equal(pred[:, :10], pred2[:, :10]) and not torch.equal(pred[:, 10:], pred2[:, 10:])

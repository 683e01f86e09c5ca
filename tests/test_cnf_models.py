"""CNF and planar-flow models: traces, log-determinants, invertibility, densities, and the 2-D data/targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ndode
from ndode.data.toy2d import DATASETS, RAW_ENERGIES, TARGETS, check_name, energy, make_circles, make_moons, sample_data
from ndode.models.cnf import CNF, ConcatMLPDynamics, HyperPlanarDynamics, exact_trace, hutchinson_trace
from ndode.models.planar import PlanarFlow, PlanarLayer, constrain_u, planar_forward

SOLVER = {"method": "dopri5", "rtol": 1e-6, "atol": 1e-6}


def _jacobian_trace(fn, z):
    """Trace of the full autograd Jacobian of a per-sample map, sample by sample."""
    out = []
    for zi in z:
        J = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0], zi)
        out.append(torch.trace(J))
    return torch.stack(out)


def _randomise(module, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


@pytest.mark.parametrize("width", [1, 5])
def test_hyperplanar_closed_form_trace_equals_autograd_jacobian_trace(width):
    dyn = _randomise(HyperPlanarDynamics(2, width, hidden=8).double())
    z = torch.randn(6, 2, dtype=torch.float64)
    t = torch.tensor(0.7, dtype=torch.float64)
    _, tr = dyn(t, z)
    expect = _jacobian_trace(lambda v: dyn(t, v)[0], z)
    torch.testing.assert_close(tr, expect, rtol=1e-10, atol=1e-12)


def test_ffjord_exact_trace_equals_autograd_jacobian_trace():
    dyn = _randomise(ConcatMLPDynamics(2, 16, 3).double())
    z = torch.randn(5, 2, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    with torch.no_grad():  # as in an evaluation solve: the dynamics enable autograd themselves
        _, tr = dyn(t, z)
    expect = _jacobian_trace(lambda v: dyn.velocity(t, v), z)
    torch.testing.assert_close(tr, expect, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(probe):
    dyn = _randomise(ConcatMLPDynamics(2, 16, 2).double(), seed=1)
    z0 = torch.randn(1, 2, dtype=torch.float64)
    t = torch.tensor(0.2, dtype=torch.float64)
    n = 20000
    z = z0.expand(n, 2).clone().requires_grad_(True)
    f = dyn.velocity(t, z)
    g = torch.Generator().manual_seed(3)
    if probe == "gaussian":
        e = torch.randn(n, 2, generator=g, dtype=torch.float64)
    else:
        e = (torch.randint(0, 2, (n, 2), generator=g) * 2 - 1).double()
    exact = exact_trace(f, z, create_graph=False)[0]  # retains the graph for the estimate below
    est = hutchinson_trace(f, z, e, create_graph=False)
    se = est.std() / math.sqrt(n)
    assert abs(est.mean() - exact) < 3 * se, (est.mean().item(), exact.item(), se.item())
    assert est.std() > 0  # a real estimator: it varies with the probe


def _few_steps_cnf(steps=5, seed=0):
    torch.manual_seed(seed)
    m = CNF(HyperPlanarDynamics(2, 8, hidden=16), t1=1.0, base_var=0.1, solver=dict(SOLVER, adjoint=ndode.BacksolveAdjoint())).double()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = sample_data("circles", 128, rng).double()
        loss = -m.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m


def test_trained_cnf_density_integrates_to_one_over_a_grid():
    m = _few_steps_cnf()
    lim, n = 2.5, 81
    axis = torch.linspace(-lim, lim, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        p = m.log_prob(grid, adjoint=False).exp()
    mass = (p.sum() * (axis[1] - axis[0]) ** 2).item()
    assert abs(mass - 1) < 0.02, mass


def test_ffjord_cnf_density_integrates_to_one_over_a_grid():
    torch.manual_seed(0)
    m = CNF(_randomise(ConcatMLPDynamics(2, 16, 2), scale=0.3).double(), t1=0.5, base_var=1.0, solver=SOLVER)
    axis = torch.linspace(-7, 7, 101, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = (m.log_prob(grid).exp().sum() * (axis[1] - axis[0]) ** 2).item()
    assert abs(mass - 1) < 0.02, mass


@pytest.mark.parametrize("kind", ["cnf", "ffjord"])
def test_cnf_sample_then_log_prob_gives_the_reported_log_density(kind):
    torch.manual_seed(1)
    if kind == "cnf":
        m = _few_steps_cnf(steps=3)
    else:
        m = CNF(_randomise(ConcatMLPDynamics(2, 16, 2), scale=0.3).double(), t1=0.5, solver=SOLVER)
    with torch.no_grad():
        x, logq = m.sample(50, torch.Generator().manual_seed(0), adjoint=False)
        again = m.log_prob(x, adjoint=False)
    torch.testing.assert_close(again, logq, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("orientation", ["generative", "normalizing"])
def test_planar_sample_then_log_prob_gives_the_reported_log_density(orientation):
    m = _randomise(PlanarFlow(2, 6, orientation).double(), scale=0.8, seed=2)
    with torch.no_grad():
        x, logq = m.sample(200, torch.Generator().manual_seed(0))
        torch.testing.assert_close(m.log_prob(x), logq, rtol=1e-8, atol=1e-8)


def test_planar_layer_log_determinant_matches_slogdet_of_its_jacobian():
    layer = _randomise(PlanarLayer(2).double(), scale=1.5, seed=4)
    z = torch.randn(8, 2, dtype=torch.float64) * 2
    _, logdet = layer(z)
    for zi, ld in zip(z, logdet):
        J = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0][0], zi)
        sign, expect = torch.linalg.slogdet(J)
        assert sign > 0
        torch.testing.assert_close(ld, expect, rtol=1e-10, atol=1e-12)


def test_planar_constraint_keeps_the_layer_invertible():
    w = torch.tensor([[1.0, 2.0], [0.3, -0.1], [5.0, 0.0]], dtype=torch.float64)
    # wᵀu ≪ −1: the raw layers are not invertible
    u = torch.tensor([[-10.0, -10.0], [-3.0, 40.0], [-7.0, 1.0]], dtype=torch.float64)
    assert ((w * u).sum(-1) < -1).all()
    u_hat = constrain_u(w, u)
    assert ((w * u_hat).sum(-1) > -1 + 5e-4).all()
    layer = PlanarLayer(2).double()
    z = torch.linspace(-6, 6, 401, dtype=torch.float64)[:, None] * torch.tensor([[1.0, 0.7]], dtype=torch.float64)
    for k in range(3):
        with torch.no_grad():
            layer.w.copy_(w[k])
            layer.u.copy_(u[k])
            layer.b.fill_(0.4)
            y, logdet = layer(z)
            assert torch.isfinite(logdet).all()
            # det = 1 + (1 − tanh²) wᵀû > 0 everywhere, and the inverse recovers z
            det = 1 + (1 - torch.tanh(z @ w[k] + 0.4) ** 2) * (w[k] @ u_hat[k])
            assert (det > 0).all()
            torch.testing.assert_close(layer.inverse(y), z, rtol=1e-9, atol=1e-9)
    # the raw u would fold the line: the map along w is not monotone
    y_raw, _ = planar_forward(z, w[0], u[0], torch.tensor(0.4, dtype=torch.float64))
    s = y_raw @ w[0]
    assert not bool((s[1:] > s[:-1]).all())


def test_planar_partial_flow_ends_at_the_model_density():
    m = _randomise(PlanarFlow(2, 5, "normalizing", base_var=0.5).double(), scale=0.8, seed=5)
    z = m.base_sample(10, torch.Generator().manual_seed(0))
    grid = torch.randn(30, 2, dtype=torch.float64)
    x_end, lp_end = m.partial(z, grid, 1.0)
    z0, lp0 = m.partial(z, grid, 0.0)
    torch.testing.assert_close(lp_end, m.log_prob(grid))
    torch.testing.assert_close(x_end, m.transform(z)[0])
    torch.testing.assert_close(z0, z)


def test_circles_and_moons_follow_sklearn_definitions():
    rng = np.random.default_rng(0)
    c = make_circles(101, rng, noise=0.0, factor=0.5)
    r = np.sort(np.linalg.norm(c, axis=1))
    assert len(c) == 101
    np.testing.assert_allclose(r[:51], 0.5)  # n - n//2 inner points
    np.testing.assert_allclose(r[51:], 1.0)
    m = make_moons(100, rng, noise=0.0)
    upper = m[np.isclose(np.linalg.norm(m, axis=1), 1.0) & (m[:, 1] >= 0)]
    lower = m[np.isclose(np.linalg.norm(m - [1.0, 0.5], axis=1), 1.0) & (m[:, 1] <= 0.5)]
    assert len(upper) >= 50 and len(lower) >= 50
    noisy = make_circles(20000, rng, noise=0.06) - make_circles(20000, np.random.default_rng(1), noise=0.0)
    assert 0.055 < np.sort(np.linalg.norm(make_circles(20000, np.random.default_rng(2), noise=0.06), axis=1)).std()
    assert noisy.shape == (20000, 2)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_data_sets_sample_the_requested_count_reproducibly(name):
    a = sample_data(name, 501, np.random.default_rng(5))
    b = sample_data(name, 501, np.random.default_rng(5))
    assert a.shape == (501, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


def test_targets_match_rezende_mohamed_closed_forms():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]])
    u2 = RAW_ENERGIES["U2"]
    torch.testing.assert_close(u2(z), 0.5 * ((z[:, 1] - torch.sin(math.pi * z[:, 0] / 2)) / 0.4) ** 2)
    # U1 at (2, 0): on the ring, the near mode contributes exp(0), the far one exp(-0.5 (4/0.6)^2)
    u1 = energy("U1", z[1:2])
    torch.testing.assert_close(u1, -torch.log(1 + torch.exp(torch.tensor([-0.5 * (4 / 0.6) ** 2]))))
    for name in TARGETS:
        e = energy(name, torch.randn(100, 2) * 3)
        assert e.shape == (100,) and torch.isfinite(e).all()


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="U1.*U4c.*circles.*rings"):
        check_name("U9")
    with pytest.raises(ValueError, match="8gaussians"):
        sample_data("spiral", 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="targets: \\['U1', 'U2c', 'U3c', 'U4c'\\]"):
        energy("moons", torch.zeros(1, 2))


def test_non_positive_sizes_are_refused():
    with pytest.raises(ValueError, match="layers=0"):
        PlanarFlow(2, 0)
    with pytest.raises(ValueError, match="width=-1"):
        HyperPlanarDynamics(2, -1)

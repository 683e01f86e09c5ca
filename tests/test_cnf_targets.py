"""Figure 4's targets are densities: U1 and the confined U2c–U4c normalise, their log Z by quadrature converges and
the normalised density integrates to 1; Rezende & Mohamed's raw U2–U4 do not normalise. The forward-KL quadrature and
the box test behave as their formulas say."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ndode.data.toy2d import (
    PLOT_BOX,
    QUAD_BOX,
    RAW_ENERGIES,
    TARGETS,
    WALL_AT,
    check_name,
    energy,
    grid_kl,
    log_z,
    outside_box,
    quadrature_grid,
    wall,
)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_log_z_quadrature_converges_in_resolution_and_box(name):
    coarse, fine = log_z(name, n=150), log_z(name, n=600)
    assert abs(coarse - fine) < 1e-6  # smooth integrands: the midpoint rule has converged long before 600²
    wider = log_z(name, n=800, box=8.0)
    assert abs(wider - fine) < 1e-6  # and [−6, 6]² holds all the mass that matters
    assert 1.0 < fine < 3.5


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_normalised_target_integrates_to_one_on_another_grid(name):
    # a grid of another resolution and box than log_z's: exp(−U − log Z) must still integrate to 1
    _, pts, area = quadrature_grid(451, 7.0)
    mass = float(torch.exp(-energy(name, pts) - log_z(name)).sum() * area)
    assert mass == pytest.approx(1.0, abs=1e-5)


def test_log_z_of_u1_agrees_with_importance_sampling():
    # an estimate that shares nothing with the quadrature: E_g[exp(−U)/g] under g = N(0, 2² I)
    g = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(400_000, 2, generator=g, dtype=torch.float64)
    log_g = -(x ** 2).sum(1) / 8 - math.log(2 * math.pi * 4)
    w = torch.exp(-energy("U1", x) - log_g)
    est, se = float(w.mean()), float(w.std() / math.sqrt(len(w)))
    assert abs(est - math.exp(log_z("U1"))) < 4 * se and se / est < 0.01


@pytest.mark.parametrize("name", ["U2", "U3", "U4"])
def test_raw_rezende_mohamed_energies_do_not_normalise_but_their_confined_versions_do(name):
    def log_int(u, box):
        _, pts, area = quadrature_grid(int(50 * box), box)
        return float(torch.logsumexp(-u(pts), 0) + math.log(area))

    raw = [log_int(RAW_ENERGIES[name], b) for b in (4.0, 8.0, 16.0)]
    # exp(−U) is constant in mass along z₁: doubling the box adds log 2 without end
    assert raw[1] - raw[0] == pytest.approx(math.log(2), abs=0.05)
    assert raw[2] - raw[1] == pytest.approx(math.log(2), abs=0.01)
    conf = [log_int(TARGETS[f"{name}c"], b) for b in (8.0, 16.0)]
    assert conf[1] - conf[0] == pytest.approx(0.0, abs=1e-6)


def test_the_wall_is_smooth_flat_inside_and_steep_outside():
    z1 = torch.linspace(-6, 6, 2401, dtype=torch.float64)
    z = torch.stack([z1, torch.zeros_like(z1)], 1)
    w = wall(z)
    inside = z1.abs() < WALL_AT - 1.0
    assert float(w[inside].max()) < 1e-3  # Rezende & Mohamed's picture is untouched in the middle
    assert float(wall(torch.tensor([[4.0, 0.0]]))) > 5.0  # the density falls by > e^5 at the box's edge
    torch.testing.assert_close(w, wall(-z))  # symmetric
    d = torch.diff(w) / torch.diff(z1)
    assert float(torch.diff(d).abs().max()) < 0.1  # no kink: the slope changes gradually on this 0.005 grid
    # the confined targets equal the raw ones plus the wall
    for name in ("U2", "U3", "U4"):
        pts = torch.randn(50, 2, dtype=torch.float64) * 3
        torch.testing.assert_close(energy(f"{name}c", pts), RAW_ENERGIES[name](pts) + wall(pts))


def test_raw_names_are_refused_pointing_to_the_confined_targets():
    with pytest.raises(ValueError, match=r"data='U3'.*not a density on R².*data=U3c"):
        check_name("U3", "data")
    with pytest.raises(ValueError, match=r"targets: \['U1', 'U2c', 'U3c', 'U4c'\]"):
        energy("moons", torch.zeros(1, 2))


def test_grid_kl_matches_the_closed_form_of_two_gaussians():
    _, pts, area = quadrature_grid(400, QUAD_BOX)
    # p = N(0, I) (passed unnormalised), q = N((0.5, 0), 1.5² I): KL = log(s²) + (1 + m²)/s² − 1 in 2-D
    log_p = -(pts ** 2).sum(1) / 2 + 3.0
    s2, m = 1.5 ** 2, 0.5
    log_q = -((pts - torch.tensor([m, 0.0], dtype=pts.dtype)) ** 2).sum(1) / (2 * s2) - math.log(2 * math.pi * s2)
    exact = math.log(s2) + (1 + m * m / 2) / s2 - 1
    assert grid_kl(log_p, log_q, area) == pytest.approx(exact, abs=1e-6)
    log_pn = -(pts ** 2).sum(1) / 2 - math.log(2 * math.pi)
    assert grid_kl(log_p, log_pn, area) == pytest.approx(0.0, abs=1e-8)  # q = p: zero


def test_outside_box_and_the_targets_share_outside_the_plotted_box():
    x = torch.tensor([[0.0, 0.0], [3.9, -3.9], [4.1, 0.0], [0.0, -4.5]])
    assert outside_box(x).tolist() == [False, False, True, True]
    _, pts, area = quadrature_grid(300, QUAD_BOX)
    for name, most in (("U1", 1e-6), ("U3c", 1e-3), ("U4c", 0.03)):  # U4's lower branch dips below z₂ = −4
        w = torch.softmax(-energy(name, pts), 0)
        assert float(w[outside_box(pts, PLOT_BOX)].sum()) < most


def test_quadrature_grid_is_the_midpoint_rule():
    axis, pts, area = quadrature_grid(4, 2.0)
    np.testing.assert_allclose(axis.numpy(), [-1.5, -0.5, 0.5, 1.5])
    assert area == 1.0 and pts.shape == (16, 2) and pts[1].tolist() == [-0.5, -1.5]  # z₁ fastest
    with pytest.raises(ValueError, match="n=0"):
        quadrature_grid(0, 1.0)

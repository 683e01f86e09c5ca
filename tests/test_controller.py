"""Step-size controllers: the default is SciPy's RK45 controller, the PI controller takes other (fewer rejected)
steps to the same accuracy, a controller object is stateless across solves, and bad settings are named."""

import math

import pytest
import torch
from scipy.integrate import solve_ivp

import ndode


def vdp(t, y):  # Van der Pol, μ = 1
    return torch.stack([y[..., 1], (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], dim=-1)


Y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
T = torch.linspace(0.0, 10.0, 11, dtype=torch.float64)


def reference():
    r = solve_ivp(lambda t, y: [y[1], (1 - y[0] ** 2) * y[1] - y[0]], (0.0, 10.0), Y0.tolist(), method="DOP853",
                  t_eval=T.tolist(), rtol=1e-13, atol=1e-13)
    return torch.tensor(r.y.T)


def stats(controller=None, tol=1e-6, **kw):
    return ndode.solve(vdp, Y0, T, rtol=tol, atol=tol, controller=controller, **kw).stats


@pytest.mark.parametrize("tol", [1e-3, 1e-6, 1e-9])
def test_integral_controller_has_scipy_rk45_nfe(tol):
    integral = stats(ndode.IController(), tol)
    assert integral == stats("integral", tol)
    # the torchdiffeq-style options build the same controller
    assert integral == ndode.solve(vdp, Y0, T, rtol=tol, atol=tol,
                                   options={"safety": 0.9, "min_factor": 0.2, "max_factor": 10.0}).stats
    r = solve_ivp(lambda t, y: [y[1], (1 - y[0] ** 2) * y[1] - y[0]], (0.0, 10.0), Y0.tolist(), method="RK45",
                  rtol=tol, atol=tol)
    assert ndode.solve(vdp, Y0, T[[0, -1]], rtol=tol, atol=tol, controller="integral").stats.nfe == r.nfev


@pytest.mark.parametrize("tol", [1e-3, 1e-6, 1e-9])
def test_default_is_the_pi_controller(tol):
    default = stats(tol=tol)
    assert default == stats(ndode.PIController(), tol) == stats("pi", tol)
    assert default != stats(ndode.IController(), tol)


def test_experiments_solve_with_the_integral_controller_their_records_ran_with():
    from ndode.harness.config import SolverConfig, solver_kwargs

    kw = solver_kwargs(SolverConfig(rtol=1e-6, atol=1e-6))
    assert ndode.solve(vdp, Y0, T, **kw).stats == stats(ndode.IController(), 1e-6)


def test_pi_with_no_proportional_term_is_the_integral_controller():
    for tol in (1e-3, 1e-6, 1e-9):
        assert stats(ndode.PIController(pcoeff=0.0, icoeff=1.0), tol) == stats(ndode.IController(), tol)


@pytest.mark.parametrize("controller", [ndode.PIController(), ndode.PIController(pcoeff=0.4, icoeff=0.3)])
def test_pi_controller_rejects_fewer_steps_and_meets_the_tolerance(controller):
    ref = reference()
    errors = []
    for tol in (1e-4, 1e-6, 1e-8):
        sol = ndode.solve(vdp, Y0, T, rtol=tol, atol=tol, controller=controller)
        errors.append(float((sol.ys - ref).abs().max()))
        assert sol.stats.n_rejected < stats(ndode.IController(), tol).n_rejected, tol
        assert sol.stats.nfe == 2 + 6 * sol.stats.n_steps
    # tolerance proportionality: each factor 100 in tol buys at least a factor 30 in error, the error stays within
    # a small multiple of tol
    assert errors[0] / errors[1] > 30 and errors[1] / errors[2] > 30, errors
    assert all(e < 100 * tol for e, tol in zip(errors, (1e-4, 1e-6, 1e-8))), errors


def test_a_controller_object_holds_no_state_between_solves():
    c = ndode.PIController()
    first = stats(c)
    assert stats(c) == first  # its memory (last error, last rejection) belongs to one solve


def test_options_and_keyword_are_the_same_and_reach_odeint():
    c = ndode.PIController()
    a = ndode.solve(vdp, Y0, T, rtol=1e-6, atol=1e-6, controller=c)
    b = ndode.solve(vdp, Y0, T, rtol=1e-6, atol=1e-6, options={"controller": c})
    assert a.stats == b.stats and torch.equal(a.ys, b.ys)
    assert torch.equal(ndode.odeint(vdp, Y0, T, rtol=1e-6, atol=1e-6, options={"controller": "pi"}), a.ys)


def test_backsolve_adjoint_with_the_pi_controller_matches_direct_backprop():
    w = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=torch.float64, requires_grad=True)
    f = lambda t, y: torch.tanh(y @ w.T)  # noqa: E731
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    opts = {"controller": ndode.PIController()}
    direct = torch.autograd.grad(ndode.odeint(f, y0, T, rtol=1e-10, atol=1e-10, options=opts).sum(), w)[0]
    sol = ndode.solve(f, y0, T, rtol=1e-10, atol=1e-10, controller=ndode.PIController(),
                      adjoint=ndode.BacksolveAdjoint(params=[w]))
    adjoint = torch.autograd.grad(sol.ys.sum(), w)[0]
    assert torch.allclose(direct, adjoint, rtol=1e-6, atol=1e-8)
    assert sol.stats.nfe_backward > 0


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(controller="p"), ValueError, r"options\['controller'\] must be a step-size controller .*'integral', 'pi'"),
    (dict(controller=ndode.PIController(), options={"safety": 0.8}), ValueError,
     r"options \['safety'\] and options\['controller'\] both given"),
    (dict(controller="pi", options={"controller": "integral"}), ValueError, r"controller given both"),
    (dict(controller="pi", method="rk4"), ValueError, r"controller applies to an adaptive method of ndode's; method 'rk4' takes fixed steps"),
    (dict(controller="pi", method="scipy_solver"), ValueError, r"method 'scipy_solver' chooses its own steps"),
    (dict(controller="pi", options={"step_size": 0.1}), ValueError, r"do not apply with options\['step_size'\]"),
])
def test_bad_controller_input_is_named(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        ndode.solve(vdp, Y0, T, **kwargs)


@pytest.mark.parametrize("make, msg", [
    (lambda: ndode.PIController(icoeff=0.0), r"PIController: icoeff must be a finite number in \(0.0, inf\)"),
    (lambda: ndode.PIController(pcoeff=-0.1), r"PIController: pcoeff must be a finite number >= 0"),
    (lambda: ndode.IController(safety=1.5), r"IController: safety must be a finite number in \(0.0, 1.0\]"),
    (lambda: ndode.IController(max_factor=0.5), r"IController: max_factor must be a finite number in \(1.0, inf\)"),
    (lambda: ndode.PIController(min_factor=math.nan), r"min_factor must be a finite number in \(0.0, 1.0\)"),
])
def test_bad_controller_settings_are_named(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()

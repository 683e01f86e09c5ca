"""The adjoint: exact gradients for states, parameters and times; O(1) memory; clear errors."""

import math

import pytest
import torch
from _fields import D, MLPField, functional_field

import ndode
from ndode.memory import saved_tensor_bytes

METHOD_OPTS = {"dopri5": None, "tsit5": None, "rk4": {"step_size": 0.01}}


# dopri5 in make test-fast; the others in make test (a float64 gradcheck takes seconds)
@pytest.mark.parametrize("method", [m if m == "dopri5" else pytest.param(m, marks=pytest.mark.slow) for m in METHOD_OPTS])
def test_gradcheck_y0_params_and_t(method, device):
    m = MLPField().to(device)
    w1, b1, w2 = (p.detach().clone().requires_grad_() for p in m.parameters())
    y0 = torch.randn(3, 2, dtype=D, generator=torch.Generator().manual_seed(1)).to(device).requires_grad_()
    t = torch.tensor([0.0, 0.4, 0.9, 1.3], dtype=D, device=device, requires_grad=True)
    weights = torch.randn(4, 3, 2, dtype=D, generator=torch.Generator().manual_seed(2)).to(device)

    def loss(y0, t, w1, b1, w2):  # a loss on every output time
        ys = ndode.odeint_adjoint(functional_field(w1, b1, w2), y0, t, rtol=1e-12, atol=1e-12, method=method,
                                  options=METHOD_OPTS[method], adjoint_params=(w1, b1, w2))
        return (ys * weights).sum()

    tol = dict(atol=1e-6, rtol=1e-4) if method == "rk4" else dict(atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradcheck(loss, (y0, t, w1, b1, w2), eps=1e-6, **tol)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", pytest.param("bosh3", marks=pytest.mark.slow)])  # bosh3: many steps
@pytest.mark.parametrize("norm", ["seminorm", "full"])
def test_matches_direct_backprop_at_tight_tolerance(method, norm, device):
    m = MLPField(seed=3).to(device)
    y0 = torch.randn(5, 2, dtype=D, generator=torch.Generator().manual_seed(4)).to(device).requires_grad_()
    t = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=D, device=device)
    w = torch.randn(4, 5, 2, dtype=D, generator=torch.Generator().manual_seed(5)).to(device)

    def grads(adjoint):
        for p in [y0, *m.parameters()]:
            p.grad = None
        adj = ndode.BacksolveAdjoint(options={"norm": norm}) if adjoint else None
        ys = ndode.solve(m, y0, t, rtol=1e-12, atol=1e-12, method=method, adjoint=adj).ys
        (ys * w).sum().backward()
        return [y0.grad.clone()] + [p.grad.clone() for p in m.parameters()]

    for a, b in zip(grads(True), grads(False)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9), (a - b).abs().max()


@pytest.mark.parametrize("norm", ["seminorm", "full"])
def test_float32_matches_direct_backprop(norm, device):
    # single precision, as models train: the two gradients agree to the solver tolerance, not to rounding
    m = MLPField(seed=3).to(device, torch.float32)
    y0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(4)).to(device).requires_grad_()
    t = torch.tensor([0.0, 0.5, 1.0, 2.0], device=device)
    w = torch.randn(4, 5, 2, generator=torch.Generator().manual_seed(5)).to(device)

    def grads(adjoint):
        for p in [y0, *m.parameters()]:
            p.grad = None
        ys = ndode.solve(m, y0, t, rtol=1e-6, atol=1e-6, adjoint=adjoint).ys
        assert ys.dtype == torch.float32
        (ys * w).sum().backward()
        return [y0.grad.clone()] + [p.grad.clone() for p in m.parameters()]

    for a, b in zip(grads(ndode.BacksolveAdjoint(options={"norm": norm})), grads(None)):
        assert a.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-3, atol=1e-4), (a - b).abs().max()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tuple_state_matches_direct_backprop(dtype, device):
    m = MLPField(seed=6).to(device, dtype)

    class Joint(torch.nn.Module):  # a CNF-like pair (z, log p)
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, t, state):
            z, logp = state
            dz = self.m(t, z)
            return dz, -(dz**2).sum(-1, keepdim=True)

    f = Joint()
    z0 = torch.randn(4, 2, dtype=D, generator=torch.Generator().manual_seed(7)).to(device, dtype).requires_grad_()
    l0 = torch.zeros(4, 1, dtype=dtype, device=device, requires_grad=True)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=dtype, device=device)
    tol, close = (1e-12, dict(rtol=1e-6, atol=1e-9)) if dtype == D else (1e-6, dict(rtol=1e-3, atol=1e-4))

    def grads(adjoint):
        for p in [z0, l0, *f.parameters()]:
            p.grad = None
        z, logp = ndode.solve(f, (z0, l0), t, rtol=tol, atol=tol, adjoint=adjoint).ys
        assert z.shape == (3, 4, 2) and logp.shape == (3, 4, 1) and logp.dtype == dtype
        (z[-1].sin().sum() + logp[1:].sum()).backward()
        return [z0.grad.clone(), l0.grad.clone()] + [p.grad.clone() for p in f.parameters()]

    for a, b in zip(grads(ndode.BacksolveAdjoint()), grads(None)):
        assert torch.allclose(a, b, **close), (a - b).abs().max()


def test_backward_stats_and_no_restarts_at_output_times():
    m = MLPField(seed=8)
    y0 = torch.randn(16, 2, dtype=D, generator=torch.Generator().manual_seed(9))
    few = ndode.solve(m, y0, torch.linspace(0, 5, 2, dtype=D), rtol=1e-6, atol=1e-8, adjoint=ndode.BacksolveAdjoint())
    few.ys[-1].sum().backward()
    many = ndode.solve(m, y0, torch.linspace(0, 5, 100, dtype=D), rtol=1e-6, atol=1e-8, adjoint=ndode.BacksolveAdjoint())
    many.ys.sum().backward()
    assert few.stats.nfe_backward > 0 and few.stats.n_accepted_backward > 0
    # 99 output times are passed exactly, one re-evaluation each after the jump; the step size carries over,
    # so the rest of the work stays close to the 2-output solve instead of restarting 99 times
    extra = many.stats.nfe_backward - few.stats.nfe_backward
    assert extra < 99 * 1 + 6 * 99, (few.stats, many.stats)
    assert many.stats.nfe == few.stats.nfe  # forward: dense output, no forced steps


def _steps_memory(adjoint, n_steps):
    m = MLPField(dim=2, hidden=32, seed=10)
    y0 = torch.randn(64, 2, dtype=D, generator=torch.Generator().manual_seed(11))
    t = torch.tensor([0.0, 1.0], dtype=D)
    return saved_tensor_bytes(
        lambda: ndode.solve(m, y0, t, method="rk4", options={"step_size": 1.0 / n_steps},
                            adjoint=ndode.BacksolveAdjoint() if adjoint else None).ys,
        ignore=list(m.parameters()),
    )


def test_constant_memory_in_the_number_of_steps():
    steps = [10, 100, 1000]
    adj = [_steps_memory(True, n) for n in steps]
    direct = [_steps_memory(False, n) for n in steps]
    assert adj[0] == adj[1] == adj[2] > 0
    # direct backprop keeps every stage of every step: linear in the steps
    assert direct[1] > 8 * direct[0] and direct[2] > 8 * direct[1]
    assert direct[0] > adj[0]


# ------------------------------------------------------------------ errors

Y0 = torch.tensor([[1.0, 0.5]], dtype=D)
T = torch.tensor([0.0, 1.0], dtype=D)


def test_bad_adjoint_input_is_named():
    m = MLPField()
    w = torch.ones(2, dtype=D)
    with pytest.raises(TypeError, match="not a torch.nn.Module.*pass adjoint_params"):
        ndode.odeint_adjoint(lambda t, y: -y, Y0, T)
    with pytest.raises(ValueError, match=r"adjoint_params\[0\] \(shape \(2,\)\) does not require grad"):
        ndode.odeint_adjoint(lambda t, y: -y * w, Y0, T, adjoint_params=(w,))
    wg = torch.ones(2, dtype=D, requires_grad=True)
    with pytest.raises(ValueError, match=r"adjoint_params\[0\] .* is not a leaf tensor"):
        ndode.odeint_adjoint(lambda t, y: -y, Y0, T, adjoint_params=(wg * 2,))
    with pytest.raises(ValueError, match=r"adjoint_params\[1\] is the same tensor as adjoint_params\[0\]"):
        ndode.odeint_adjoint(lambda t, y: -y * wg, Y0, T, adjoint_params=(wg, wg))
    with pytest.raises(TypeError, match="adjoint_params must be a list or tuple"):
        ndode.odeint_adjoint(lambda t, y: -y * wg, Y0, T, adjoint_params=wg)
    with pytest.raises(ValueError, match=r"unknown adjoint_options \['nrom'\].*allowed: first_step.*norm"):
        ndode.odeint_adjoint(m, Y0, T, adjoint_options={"nrom": "seminorm"})
    with pytest.raises(ValueError, match=r"adjoint_options\['norm'\] must be one of seminorm, full or a callable, got 'max'"):
        ndode.odeint_adjoint(m, Y0, T, adjoint_options={"norm": "max"})
    with pytest.raises(ValueError, match="unknown adjoint_method 'adams'; known methods"):
        ndode.odeint_adjoint(m, Y0, T, adjoint_method="adams")
    with pytest.raises(ValueError, match="adjoint_rtol must be a non-negative finite number"):
        ndode.odeint_adjoint(m, Y0, T, adjoint_rtol=-1.0)
    with pytest.raises(TypeError, match=r"adjoint=True: pass the method, adjoint=ndode.BacksolveAdjoint\(\)"):
        ndode.solve(m, Y0, T, adjoint=True)
    with pytest.raises(TypeError, match="adjoint must be None or an adjoint method .* got str"):
        ndode.solve(m, Y0, T, adjoint="backsolve")


def test_frozen_module_parameters_are_not_differentiated():
    m = MLPField()
    m.w2.requires_grad_(False)
    y0 = Y0.clone().requires_grad_()
    ndode.odeint_adjoint(m, y0, T)[-1].sum().backward()
    assert m.w2.grad is None and m.w1.grad is not None and y0.grad is not None


class Poisoned(torch.nn.Module):
    """Healthy in the forward pass; its vector–Jacobian products turn non-finite in the backward pass."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(-1.0, dtype=D))

    def forward(self, t, y):
        return self.w * y + (torch.sqrt(y - y.detach()) if torch.is_grad_enabled() else 0)  # d sqrt(0) = inf


@pytest.mark.parametrize("method, options, msg", [
    ("dopri5", None, r"non-finite .* at t=\S+, dt=\S+ \(method 'dopri5', backward pass\)"),
    ("rk4", {"step_size": 0.1}, r"non-finite state \(nan or inf\) at t=\S+, dt=\S+ \(method 'rk4', backward pass\)"),
])
def test_backward_failure_raises_with_t_dt_and_backward(method, options, msg):
    y0 = Y0.clone().requires_grad_()
    ys = ndode.odeint_adjoint(Poisoned(), y0, T, method=method, options=options)
    with pytest.raises(ndode.SolverError, match=msg):
        ys.sum().backward()


# ------------------------------------------------------------------ edge cases (issue 9)


def test_func_that_ignores_y():
    # f = w: y(T) = y0 + w (T - t0), so dL/dy0 = 1, dL/dw = T - t0, dL/dT = Σw, dL/dt0 = -Σw for L = Σ y(T).
    # autograd returns None for y (and for every parameter without a path): the adjoint must read that as 0.
    w = torch.tensor([0.5, -1.5], dtype=D, requires_grad=True)
    y0 = torch.tensor([[1.0, 2.0]], dtype=D, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=D, requires_grad=True)
    ys = ndode.odeint_adjoint(lambda t, y: w * torch.ones_like(y), y0, t, adjoint_params=(w,))
    ys[-1].sum().backward()
    assert torch.allclose(y0.grad, torch.ones_like(y0))
    assert torch.allclose(w.grad, torch.full_like(w, 2.0))
    assert torch.allclose(t.grad, torch.tensor([1.0, 0.0, -1.0], dtype=D))
    # nothing in func requires grad at all
    y0.grad = None
    ys = ndode.odeint_adjoint(lambda t, y: torch.ones_like(y), y0, t.detach(), adjoint_params=())
    (3 * ys[-1]).sum().backward()
    assert torch.allclose(y0.grad, torch.full_like(y0, 3.0))


def test_adjoint_step_ending_ulps_short_of_an_output_time():
    # the backward solve from t=1 takes a first step that ends 1 ulp past 0.7 (a few ulps short of the
    # output time in the direction of travel); the remaining sliver must not become a step-size underflow
    w = torch.tensor(-1.0, dtype=D, requires_grad=True)
    y0 = Y0.clone().requires_grad_()
    t = torch.tensor([0.0, 0.7, 1.0], dtype=D)
    h = math.nextafter(math.nextafter(1.0 - 0.7, 0.0), 0.0)
    assert 0 < (1.0 - h) - 0.7 < 4 * math.ulp(0.7)
    sol = ndode.solve(lambda t, y: w * y, y0, t, rtol=1e-3, atol=1e-3,
                      adjoint=ndode.BacksolveAdjoint(options={"first_step": h}, params=(w,)))
    sol.ys.sum().backward()
    assert sol.stats.n_rejected_backward == 0
    # L = Σ_i y0 e^{w t_i}: dL/dy0 = Σ_i e^{-t_i}
    assert torch.allclose(y0.grad, torch.exp(-t).sum().expand_as(y0), rtol=1e-3)
class PaddedScalar(torch.nn.Module):
    """A CNF-like tuple state (z, s): z is large and constant, s one scalar per sample with real dynamics."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.3, dtype=D))

    def forward(self, t, state):
        z, s = state
        return torch.zeros_like(z), torch.sin(self.w * s) * torch.cos(3 * t)


@pytest.mark.parametrize("norm", ["seminorm", "full"])
def test_backward_error_norm_is_per_component(norm):
    # the error norm is the largest RMS over the state's components in both directions, so a constant,
    # error-free component of 1000 entries must not dilute the error of the small one: the backward solve
    # of (z, s) takes exactly the steps of the solve of s alone
    f = PaddedScalar()
    s0 = torch.tensor([[0.4], [1.1]], dtype=D, requires_grad=True)
    t = torch.tensor([0.0, 2.0, 4.0], dtype=D)
    adj = ndode.BacksolveAdjoint(options={"norm": norm})
    alone = ndode.solve(lambda t, s: f(t, (s, s))[1], s0, t, rtol=1e-6, atol=1e-6,
                        adjoint=ndode.BacksolveAdjoint(options={"norm": norm}, params=(f.w,)))
    alone.ys.sum().backward()
    padded = ndode.solve(f, (torch.zeros(2, 500, dtype=D), s0), t, rtol=1e-6, atol=1e-6, adjoint=adj)
    padded.ys[1].sum().backward()
    assert padded.stats.nfe == alone.stats.nfe
    assert padded.stats.nfe_backward == alone.stats.nfe_backward > 0


def test_controller_advice_to_shrink_survives_a_clipped_step():
    # The backward solve from t=1.5 starts with first_step=10, clipped to the output time 1.0 (h = 0.5). At this
    # tolerance that step passes with an error norm in (0.59, 1], so the controller asks for a shorter step.
    # Keeping the pre-clip proposal instead (10, clipped to the next output: a step twice as long) was rejected.
    w = torch.tensor(-1.0, dtype=D, requires_grad=True)
    y0 = torch.ones(1, dtype=D, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 1.5], dtype=D)
    sol = ndode.solve(lambda t, y: w * y, y0, t, rtol=2e-5, atol=2e-5,
                      adjoint=ndode.BacksolveAdjoint(options={"first_step": 10.0}, params=(w,)))
    sol.ys[-1].sum().backward()
    assert sol.stats.n_rejected_backward == 0 and sol.stats.n_accepted_backward == 4
    assert torch.allclose(y0.grad, torch.exp(torch.tensor(-1.5, dtype=D)), rtol=1e-4)  # y(1.5) = y0 e^{-1.5}

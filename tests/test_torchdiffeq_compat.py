"""torchdiffeq's semantics in ndode (issue 19): each test names the torchdiffeq behaviour it follows.

Written for ndode; nothing here comes from torchdiffeq's own tests (``scripts/torchdiffeq_suite.py`` runs
those against ndode through a shim, outside this suite).
"""

import math
import warnings

import pytest
import torch

import ndode

D = torch.float64
FIXED = [m for m, tab in ndode.TABLEAUS.items() if not tab.adaptive]
ADAPTIVE = [m for m, tab in ndode.TABLEAUS.items() if tab.adaptive]


def _field():
    g = torch.Generator().manual_seed(3)
    A = (torch.randn(3, 3, generator=g, dtype=D) * 0.6)
    return lambda t, y: torch.tanh(y @ A) * torch.cos(2 * t) + 0.1 * y


# ------------------------------------------------------------------- (1) t.requires_grad with plain odeint


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m == "adaptive_heun" else m  # many steps
                                    for m in ndode.TABLEAUS])
def test_time_gradients_by_direct_backprop_pass_gradcheck(method):
    # torchdiffeq differentiates odeint's output times by ordinary backprop. ndode: a fixed grid is
    # differentiated exactly (time rescaled per interval); an adaptive solve gets the exact boundary terms
    # g_iᵀ f(t_i, y_i) and -aᵀ f(t_0, y_0), which match the finite differences to the solver's tolerance.
    f = _field()
    y0 = torch.tensor([0.3, -0.5, 0.8], dtype=D, requires_grad=True)
    t = torch.tensor([0.1, 0.45, 0.9], dtype=D, requires_grad=True)
    tab = ndode.TABLEAUS[method]
    # adaptive: the time gradient is right to the solver's tolerance (2nd-order pairs: looser, else 10⁵ steps)
    tol = {} if not tab.adaptive else dict(rtol=1e-8, atol=1e-8) if tab.order > 2 else dict(rtol=1e-6, atol=1e-6)
    check = dict(atol=1e-3, rtol=1e-3) if tab.adaptive and tab.order <= 2 else {}
    for ts in (t, t.detach().flip(0).requires_grad_()):
        assert torch.autograd.gradcheck(lambda y0, t: ndode.odeint(f, y0, t, method=method, **tol), (y0, ts), **check)


def test_time_gradients_agree_with_the_adjoint_and_reach_tuple_states():
    f = _field()
    t = torch.tensor([0.0, 0.3, 0.7, 1.1], dtype=D, requires_grad=True)
    y0 = torch.tensor([0.2, 0.1, -0.4], dtype=D, requires_grad=True)
    w = torch.linspace(0.5, 1.5, 12, dtype=D).view(4, 3)
    grads = []
    for solve in (ndode.odeint, lambda *a, **k: ndode.odeint_adjoint(*a, adjoint_params=(), **k)):
        (ys := solve(f, y0, t, rtol=1e-10, atol=1e-12))
        grads.append(torch.autograd.grad((ys * w).sum(), (y0, t)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    # a tuple state: each component's time gradient is its own f · g
    tup = lambda t, s: (f(t, s[0]), -s[1])  # noqa: E731
    za, zb = ndode.odeint(tup, (y0, torch.ones(2, dtype=D)), t, rtol=1e-10, atol=1e-12)
    gt, = torch.autograd.grad(zb.sum(), t)
    expected = -zb.detach().sum(1)  # d/dt_i Σ y_b(t_i), with y_b' = -y_b
    expected[0] = -expected[1:].sum()  # t_0 moves the whole decay
    torch.testing.assert_close(gt, expected, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------- (2) fixed grid = the output times


@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_without_step_size_steps_on_the_output_times(method):
    # torchdiffeq: a fixed-step method without step_size takes one step per interval of t
    seen = []
    sol = ndode.solve(lambda t, y: (seen.append(float(t)), -y)[1], torch.ones(2, dtype=D), [0.0, 0.5, 0.75, 1.5],
                      method=method)
    assert sol.stats.n_accepted == 3
    for t in (0.0, 0.5, 0.75):
        assert t in seen
    # the same as an explicit step_size equal to each interval (here one interval)
    a = ndode.odeint(lambda t, y: -y, torch.ones(2, dtype=D), [0.0, 0.5], method=method)
    b = ndode.odeint(lambda t, y: -y, torch.ones(2, dtype=D), [0.0, 0.5], method=method, options={"step_size": 0.5})
    assert torch.equal(a, b)


def test_grid_constructor_refines_the_grid_and_output_times_stay_exact():
    # torchdiffeq's grid_constructor(func, y0, t) returns the grid; ndode adds the output times to it, so they
    # are hit exactly (torchdiffeq interpolates there instead)
    calls = []

    def grid(func, y0, t):
        calls.append(t.tolist())
        return torch.linspace(float(t[0]), float(t[-1]), 11, dtype=D)

    x0 = torch.tensor(1.0, dtype=D, requires_grad=True)
    xs = ndode.odeint(lambda t, x: x, x0, torch.tensor([0.0, 1.0]), method="euler",
                      options={"grid_constructor": grid})
    assert abs(float(xs[1].detach()) - 1.1**10) < 1e-12 and calls == [[0.0, 1.0]]
    xs = ndode.odeint(lambda t, x: x, x0, torch.tensor([0.0, 0.25, 1.0]), method="euler",
                      options={"grid_constructor": grid})
    assert abs(float(xs[1].detach()) - 1.1**2 * (1 + 0.05)) < 1e-12  # steps 0, .1, .2, then .2 -> .25
    # the adjoint's backward solve asks for its own grid, from t[-1] to t[0]
    calls.clear()
    xs = ndode.odeint_adjoint(lambda t, x: x, x0, torch.tensor([0.0, 1.0]), method="euler", adjoint_params=(),
                              options={"grid_constructor": grid})
    xs[1].backward()
    assert calls == [[0.0, 1.0], [1.0, 0.0]] and abs(float(x0.grad) - 1.1**10) < 1e-12


def test_perturb_evaluates_one_ulp_inside_each_step():
    # torchdiffeq's perturb=True: the first stage one ulp after the step's start, a stage at its end one ulp before
    for dtype in (torch.float32, D):
        for adjoint in (False, True):
            seen = []
            x0 = torch.ones(2, dtype=dtype, requires_grad=True)
            f = lambda t, x: (seen.append(t.item()), -x)[1]  # noqa: E731
            kw = dict(adjoint_params=()) if adjoint else {}
            solve = ndode.odeint_adjoint if adjoint else ndode.odeint
            xs = solve(f, x0, torch.tensor([0.0, 1.0]), method="rk4", options={"step_size": 0.5, "perturb": True}, **kw)
            assert not {0.0, 0.5, 1.0} & set(seen) and min(seen) > 0 and max(seen) < 1
            if adjoint:
                seen.clear()
                xs.sum().backward()
                assert not {0.0, 0.5, 1.0} & set(seen)
            seen.clear()
            solve(f, x0, torch.tensor([0.0, 1.0]), method="rk4", options={"step_size": 0.5}, **kw)
            assert {0.0, 0.5, 1.0} <= set(seen)


# ------------------------------------------------------------------- (3) options and hooks


class _Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2).double()
        self.log = []

    def forward(self, t, x):
        return torch.tanh(self.lin(x)) * torch.sin(5 * t)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "rk4"])
def test_step_callbacks_forward_and_adjoint(method):
    # torchdiffeq: callback_step before each attempted step, callback_accept_step / callback_reject_step after it;
    # the *_adjoint twins for the backward solve; each called as cb(t0, y0, dt)
    f = _Counting()
    for name in ("callback_step", "callback_accept_step", "callback_reject_step"):
        for suffix in ("", "_adjoint"):
            setattr(f, name + suffix, lambda t0, y0, dt, key=name + suffix: f.log.append((key, float(t0), float(dt))))
    fixed = not ndode.TABLEAUS[method].adaptive
    opts = {"step_size": 0.1} if fixed else None
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        sol = ndode.solve(f, torch.tensor([1.0, 2.0], dtype=D), [0.0, 1.0], method=method, options=opts,
                          rtol=1e-6, atol=1e-8, adjoint=ndode.BacksolveAdjoint())
    assert bool(w) == fixed  # a fixed grid has no accept/reject: defining those callbacks warns
    count = lambda key: sum(1 for e in f.log if e[0] == key)  # noqa: E731
    assert count("callback_step") == sol.stats.n_steps > 0
    if not fixed:
        assert count("callback_accept_step") == sol.stats.n_accepted
        assert count("callback_reject_step") == sol.stats.n_rejected
    assert count("callback_step_adjoint") == 0
    sol.ys.sum().backward()
    assert count("callback_step_adjoint") == sol.stats.n_accepted_backward + sol.stats.n_rejected_backward > 0
    if fixed:
        assert count("callback_step") == 10 and count("callback_step_adjoint") == 10


def _jumpy():
    nfe = [0]

    def f(t, x):
        nfe[0] += 1
        return -0.5 * x if t < 0.5 else x**2

    return f, nfe


@pytest.mark.parametrize("method", ADAPTIVE)
def test_jump_t_saves_work_and_each_side_sees_its_own_branch(method):
    # torchdiffeq's jump_t: steps end exactly on the discontinuity; f is evaluated one ulp before it (the step
    # that ends there) and afresh one ulp after it (the step that starts there)
    x0 = torch.tensor([1.0, 2.0], dtype=D)
    f1, nfe1 = _jumpy()
    a = ndode.odeint(f1, x0, torch.tensor([0.0, 1.0]), rtol=1e-6, atol=1e-6, method=method)
    f2, nfe2 = _jumpy()
    b = ndode.odeint(f2, x0, torch.tensor([0.0, 1.0]), rtol=1e-6, atol=1e-6, method=method,
                     options={"jump_t": torch.tensor([0.5])})
    assert nfe2[0] < nfe1[0]
    # closed form: x(.5) = x0 e^{-1/4}, then x' = x² gives x(1) = x(.5) / (1 - x(.5)/2)
    xh = x0 * math.exp(-0.25)
    # fehlberg2's first-order estimate (weight 1/512) underrates its error: a looser check
    torch.testing.assert_close(b[-1], xh / (1 - 0.5 * xh), rtol=2e-3 if method == "fehlberg2" else 2e-5, atol=0)
    # the gentle component, where the unmarked jump's error is not swamped by the blow-up's: more accurate too
    assert abs(float(b[-1, 0] - xh[0] / (1 - 0.5 * xh[0]))) < abs(float(a[-1, 0] - xh[0] / (1 - 0.5 * xh[0])))


def test_step_t_lands_steps_on_given_times():
    ends = []
    f = lambda t, y: -y  # noqa: E731
    f.callback_accept_step = lambda t0, y0, dt: ends.append(float(t0 + dt))
    ndode.odeint(f, torch.ones(1, dtype=D), [0.0, 2.0], options={"step_t": [0.3, 1.7]})
    assert 0.3 in ends and 1.7 in ends


def test_min_and_max_step_bound_the_steps():
    # torchdiffeq: steps are clamped to [min_step, max_step]; a step at min_step is accepted whatever its error
    f = _field()
    y0 = torch.tensor([0.3, -0.5, 0.8], dtype=D)
    base = ndode.solve(f, y0, [0.0, 6.0], rtol=1e-9, atol=1e-9)
    big = ndode.solve(f, y0, [0.0, 6.0], rtol=1e-9, atol=1e-9, options={"min_step": 1.0})
    assert big.stats.n_accepted <= 7 < base.stats.n_accepted
    dts = []
    f.callback_step = lambda t0, y0, dt: dts.append(float(dt))
    small = ndode.solve(f, y0, [0.0, 6.0], rtol=1e-3, atol=1e-3, options={"max_step": 0.25})
    assert max(dts) <= 0.25 + 1e-15 and small.stats.n_accepted >= 24


def test_norm_callable_sees_the_state_shape_and_drives_the_steps():
    # torchdiffeq: options["norm"] receives the scaled error shaped like y0 (a tuple for a tuple state)
    seen = []

    def norm(e):
        seen.append(tuple(x.shape for x in e) if isinstance(e, tuple) else e.shape)
        return e[0].abs().max() if isinstance(e, tuple) else e.abs().max()

    ndode.odeint(lambda t, y: y, (torch.tensor(1.0), torch.ones(2, 2)), [0.0, 1.0], options={"norm": norm})
    assert set(seen) == {((), (2, 2))}
    f = _field()
    y0 = torch.tensor([0.3, -0.5, 0.8], dtype=D)
    n1 = ndode.solve(f, y0, [0.0, 3.0], rtol=1e-6, atol=1e-6, options={"norm": lambda e: e.abs().max()}).stats.nfe
    n10 = ndode.solve(f, y0, [0.0, 3.0], rtol=1e-6, atol=1e-6, options={"norm": lambda e: 10 * e.abs().max()}).stats.nfe
    assert n1 < n10


def test_adjoint_norm_callable_gets_time_state_adjoint_and_parameter_channels():
    # torchdiffeq: adjoint_options["norm"] receives (t, *y, *a_y, *a_params), each shaped like its tensor
    p = (torch.rand(7, dtype=D, requires_grad=True), torch.rand((), dtype=D, requires_grad=True))
    seen = []

    def norm(parts):
        seen.append(tuple(x.shape for x in parts))
        return max(x.abs().max() for x in parts[1:])

    x0 = (torch.tensor(1.0, dtype=D), torch.ones(2, 2, dtype=D))
    f = lambda t, x: (x[0] * p[1], x[1] * p[0][:4].view(2, 2))  # noqa: E731
    xs = ndode.odeint_adjoint(f, x0, [0.0, 1.0], adjoint_params=p, adjoint_options={"norm": norm})
    xs[1].sum().backward()
    assert set(seen) == {((), (), (2, 2), (), (2, 2), (7,), ())}


# ------------------------------------------------------------------- (4) methods


def test_torchdiffeq_method_names_exist_and_heun2_is_heun():
    for name in ("heun2", "heun3", "fehlberg2", "adaptive_heun", "dopri8"):
        assert name in ndode.METHODS
    assert ndode.TABLEAUS["heun2"] is ndode.TABLEAUS["heun"]
    f = _field()
    y0 = torch.tensor([0.3, -0.5, 0.8], dtype=D)
    assert torch.equal(ndode.odeint(f, y0, [0.0, 1.0], method="heun2", options={"step_size": 0.1}),
                       ndode.odeint(f, y0, [0.0, 1.0], method="heun", options={"step_size": 0.1}))


def test_dopri8_order_conditions_are_checked_to_order_eight():
    # a perturbation of one weight that keeps Σb = 1 breaks a higher-order condition: the tableau refuses it
    from ndode.tableau import ButcherTableau, TableauError

    tab = ndode.TABLEAUS["dopri8"]
    b = list(tab.b)
    b[5] += 1e-7
    b[6] -= 1e-7
    with pytest.raises(TableauError, match="order"):
        ButcherTableau("dopri8-bad", 8, c=tab.c, a=tab.a, b=tuple(b))


def test_dopri8_reaches_tight_tolerances_with_few_steps():
    lam = torch.tensor([0.5, 1.0, 2.0], dtype=D)
    t = torch.linspace(0, 3, 7, dtype=D)
    s8 = ndode.solve(lambda t, y: -lam * y, torch.ones(3, dtype=D), t, rtol=1e-12, atol=1e-14, method="dopri8")
    s5 = ndode.solve(lambda t, y: -lam * y, torch.ones(3, dtype=D), t, rtol=1e-12, atol=1e-14, method="dopri5")
    torch.testing.assert_close(s8.ys, torch.exp(-t[:, None] * lam), rtol=1e-10, atol=1e-12)
    assert s8.stats.n_accepted < s5.stats.n_accepted / 2 and s8.stats.nfe < s5.stats.nfe


# ------------------------------------------------------------------- (5) events


def _falling(g):
    return lambda t, y: torch.stack([y[1], -g * torch.ones_like(y[1])])


@pytest.mark.parametrize("method, options", [("dopri5", None), ("bosh3", None), ("rk4", {"step_size": 0.05})])
@pytest.mark.parametrize("adjoint", [False, True])
def test_odeint_event_time_and_state_with_their_gradients(method, options, adjoint):
    # torchdiffeq's odeint_event: solve until event_fn(t, y) crosses 0; the event time and the state there are
    # differentiable. A ball dropped from h0: t* = sqrt(2 h0 / g), v* = -sqrt(2 h0 g)
    g = torch.tensor(9.81, dtype=D, requires_grad=True)
    y0 = torch.tensor([2.0, 0.0], dtype=D, requires_grad=True)
    kw = dict(odeint_interface=ndode.odeint_adjoint, adjoint_params=(g,)) if adjoint else {}
    te, ys = ndode.odeint_event(_falling(g), y0, torch.tensor(0.0, dtype=D), event_fn=lambda t, y: y[0],
                                method=method, options=options, rtol=1e-10, atol=1e-10, **kw)
    h, gv = 2.0, 9.81
    ts, vs = math.sqrt(2 * h / gv), -math.sqrt(2 * h * gv)
    assert ys.shape == (2, 2) and torch.equal(ys[0], y0)
    torch.testing.assert_close(te.detach(), torch.tensor(ts, dtype=D), rtol=1e-9, atol=0)
    torch.testing.assert_close(ys[1].detach(), torch.tensor([0.0, vs], dtype=D), rtol=1e-8, atol=1e-9)
    dt_dg, dt_dy = torch.autograd.grad(te, (g, y0), retain_graph=True)
    torch.testing.assert_close(float(dt_dg), -0.5 * ts / gv, rtol=1e-7, atol=0)
    torch.testing.assert_close(float(dt_dy[0]), ts / (2 * h), rtol=1e-7, atol=0)
    dv_dg, dv_dy = torch.autograd.grad(ys[1, 1], (g, y0))
    torch.testing.assert_close(float(dv_dg), vs / (2 * gv), rtol=1e-7, atol=0)
    torch.testing.assert_close(float(dv_dy[0]), vs / (2 * h), rtol=1e-7, atol=0)


def test_event_backwards_in_time_through_odeint_and_tuple_states():
    # torchdiffeq: odeint(..., event_fn=...) returns (t_event, ys at [t0, t_event]); reverse time from t[1] < t[0]
    y0 = torch.tensor([1.0], dtype=D, requires_grad=True)
    te, ys = ndode.odeint(lambda t, y: y, y0, torch.tensor([0.0, -1.0], dtype=D),
                          event_fn=lambda t, y: y[0] - 0.5)  # y = e^t = 1/2 at t = -ln 2
    torch.testing.assert_close(float(te), -math.log(2.0), rtol=1e-7, atol=0)
    assert abs(float(torch.autograd.grad(te, y0)[0]) + 1.0) < 1e-6  # t* = ln(1/2 / y0)  =>  dt*/dy0 = -1/y0
    te_adj, _ = ndode.odeint_adjoint(lambda t, y: y, y0, torch.tensor([0.0, -1.0], dtype=D), adjoint_params=(),
                                     event_fn=lambda t, y: y[0] - 0.5)
    assert abs(float(torch.autograd.grad(te_adj, y0)[0]) + 1.0) < 1e-6
    te2, (a, b) = ndode.odeint_event(lambda t, y: (y[0], -y[1]), (y0, torch.ones(1, dtype=D)), 0.0,
                                     event_fn=lambda t, y: y[1][0] - 0.25)
    torch.testing.assert_close(float(te2), math.log(4.0), rtol=1e-7, atol=0)
    assert a.shape == (2, 1) and abs(float(a[1]) - 4.0) < 1e-6



# ------------------------------------------------------------------- scipy_solver


def test_scipy_solver_behind_the_same_call_and_under_the_adjoint():
    # torchdiffeq's method="scipy_solver" with options={"solver": ...}: SciPy's solve_ivp, the state's dtype kept;
    # gradients through odeint_adjoint (SciPy solves the backward pass too)
    t = torch.linspace(0, 3, 7, dtype=D)
    lam = torch.tensor([0.5, 1.0, 50.0], dtype=D)  # a stiff component
    for solver in ("RK45", "Radau", "BDF", "LSODA"):
        ys = ndode.odeint(lambda t, y: -lam * y, torch.ones(3), t, method="scipy_solver", options={"solver": solver},
                          rtol=1e-8, atol=1e-10)
        assert ys.dtype == torch.float32 and ys.shape == (7, 3)
        torch.testing.assert_close(ys.double(), torch.exp(-t[:, None] * lam), rtol=1e-5, atol=1e-6)
    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=D, requires_grad=True)
    y0 = torch.tensor([[1.0, 0.0]], dtype=D, requires_grad=True)
    tt = torch.linspace(0, 2, 5, dtype=D, requires_grad=True)
    f = lambda t, y: torch.mm(y**3, A)  # noqa: E731
    g_scipy = torch.autograd.grad(ndode.odeint_adjoint(f, y0, tt, method="scipy_solver", adjoint_params=(A,),
                                                       rtol=1e-9, atol=1e-9, options={"solver": "DOP853"}).sum(),
                                  (y0, A, tt))
    g_ours = torch.autograd.grad(ndode.odeint(f, y0, tt, rtol=1e-10, atol=1e-10).sum(), (y0, A, tt))
    for a, b in zip(g_scipy, g_ours):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"options\['solver'\] must be one of RK45, .*, got 'rk4'"):
        ndode.odeint(f, y0, tt, method="scipy_solver", options={"solver": "rk4"})


def test_zero_dim_states_and_float64_times_with_float32_states():
    # torchdiffeq's test problems use a 0-dim state and float64 times requiring grad with float32 states
    t = torch.linspace(1.0, 2.0, 4, dtype=D, requires_grad=True)
    for method in ("dopri5", "tsit5", "rk4"):
        y = ndode.odeint(lambda t, y: -y, torch.tensor(1.0, requires_grad=True), t, method=method)
        assert y.shape == (4,) and y.dtype == torch.float32
        torch.testing.assert_close(y.detach().double(), torch.exp(-(t.detach() - 1.0)), rtol=1e-2 if method == "rk4" else 1e-5, atol=0)
        (gt,) = torch.autograd.grad(y.sum(), t)
        assert gt.dtype == D and torch.isfinite(gt).all()


def test_odeint_event_with_an_event_fn_that_depends_on_nothing():
    # torchdiffeq's examples/learn_physics.py returns torch.zeros_like(t) once its events are used up: a root that
    # moves with nothing. The solve ends after its first step, gradients reach y0 through it, not the event time.
    def f(t, y):
        return torch.stack([y[1], -y[0]])

    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    for interface in (ndode.odeint, ndode.odeint_adjoint):
        kw = dict(adjoint_params=()) if interface is ndode.odeint_adjoint else {}
        t_event, ys = ndode.odeint_event(f, y0, torch.tensor(0.0, dtype=torch.float64),
                                         event_fn=lambda t, y: torch.zeros_like(t), odeint_interface=interface, **kw)
        assert 0.0 < float(t_event) < 1.0 and not t_event.requires_grad
        assert torch.equal(ys[0], y0.detach())
        expected = torch.stack([torch.cos(t_event), -torch.sin(t_event)])
        assert torch.allclose(ys[1], expected, atol=1e-6)
        (g,) = torch.autograd.grad(ys[1, 0], y0)
        assert torch.allclose(g, torch.stack([torch.cos(t_event), torch.sin(t_event)]), atol=1e-6)


def test_odeint_event_finds_the_first_root_in_a_step_ending_on_zero():
    # learn_physics' event_fn drops to exactly 0 past a terminal time T. A step that jumps past T must not end the
    # solve at its own end: the event is the first time event_fn leaves its sign, a crossing inside the step or T.
    T = 3.0

    def event_fn(t, y):
        return torch.zeros_like(t) if t > T else y[0] - 0.5

    def falling(t, y):  # y = 1 - t crosses 0.5 at t = 0.5, inside the (long) first steps of this linear solve
        return -torch.ones_like(y)

    t_event, _ = ndode.odeint_event(falling, torch.ones(1, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64),
                                    event_fn=event_fn)
    assert abs(float(t_event) - 0.5) < 1e-9
    t_event, _ = ndode.odeint_event(lambda t, y: torch.zeros_like(y), torch.ones(1, dtype=torch.float64),
                                    torch.tensor(0.0, dtype=torch.float64), event_fn=event_fn)  # no crossing: T
    assert abs(float(t_event) - T) < 1e-9

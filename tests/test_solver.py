"""The solver core: orders, accuracy against closed forms and SciPy, dense output, gradients, NFE, errors."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import ndode
from ndode.tableau import ButcherTableau, TableauError

ALL = list(ndode.METHODS)
ADAPTIVE = [m for m in ALL if ndode.TABLEAUS[m].adaptive]
FIXED = [m for m in ALL if not ndode.TABLEAUS[m].adaptive]
DENSE = [m for m in ADAPTIVE if ndode.TABLEAUS[m].dense is not None]  # the others step onto output times


def opts_for(method, step=0.01):
    return None if ndode.TABLEAUS[method].adaptive else {"step_size": step}


# ------------------------------------------------------------------ problems


def vdp(t, y):  # Van der Pol, μ = 1
    return torch.stack([y[..., 1], (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], dim=-1)


def vdp_np(t, y):
    return [y[1], (1 - y[0] ** 2) * y[1] - y[0]]


def lotka(t, y):  # Lotka–Volterra, α=1.5, β=1, δ=1, γ=3
    x, p = y[..., 0], y[..., 1]
    return torch.stack([1.5 * x - x * p, -3 * p + x * p], dim=-1)


def lotka_np(t, y):
    x, p = y
    return [1.5 * x - x * p, -3 * p + x * p]


NONLINEAR = {"vdp": (vdp, vdp_np, [2.0, 0.0], 6.0), "lotka": (lotka, lotka_np, [1.0, 1.0], 5.0)}


def scipy_ref(f_np, y0, ts):
    r = solve_ivp(f_np, (ts[0], ts[-1]), y0, method="DOP853", rtol=1e-12, atol=1e-12, t_eval=ts)
    assert r.success
    return torch.tensor(r.y.T)


# ------------------------------------------------------------------ tableaus


def test_tableaus_are_valid_and_fsal_detected():
    assert ndode.TABLEAUS["dopri5"].fsal and ndode.TABLEAUS["tsit5"].fsal and ndode.TABLEAUS["bosh3"].fsal
    assert not ndode.TABLEAUS["rk4"].fsal and not ndode.TABLEAUS["heun"].fsal


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(c=(0, 0.5), a=((), (0.4,)), b=(0.5, 0.5)), "row 1 of a sums"),
        (dict(c=(0, 1), a=((), (1,)), b=(0.5, 0.6)), "weights b sum"),
        (dict(c=(0, 1), a=((), (1,)), b=(0.3, 0.7)), "order-2 condition"),
        (dict(c=(0, 1), a=((), (1,)), b=(0.5, 0.5), b_err=(0.5, -0.4), error_order=1), "error weights"),
    ],
)
def test_wrong_tableau_cannot_be_built(kwargs, msg):
    with pytest.raises(TableauError, match=msg):
        ButcherTableau("bad", 2, **kwargs)


def test_wrong_rk4_node_is_caught():
    # one wrong node, the kind of bug a tableau used in production once had
    with pytest.raises(TableauError):
        ButcherTableau("rk4-bad", 4, c=(0, 0.5, 0.5, 1), a=((), (0.5,), (0, 0.5), (0, 0, 1)), b=(1 / 6, 1 / 3, 1 / 3 + 1e-6, 1 / 6 - 1e-6))


# ------------------------------------------------------------------ order of convergence


@pytest.mark.parametrize("method", ALL)
def test_order_of_convergence(method):
    """Global error at t=10 of the harmonic oscillator; slope of log-error on log-step = order."""
    tab = ndode.TABLEAUS[method]
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    T = 10.0
    exact = torch.tensor([math.cos(T), -math.sin(T)], dtype=torch.float64)
    steps = [0.1, 0.05, 0.025, 0.0125] if tab.order < 5 else [0.4, 0.2, 0.1, 0.05] if tab.order < 8 else [1.0, 0.8, 0.6, 0.5]
    errs = []
    for h in steps:
        y = ndode.odeint(lambda t, y: torch.stack([y[1], -y[0]]), y0, torch.tensor([0.0, T], dtype=torch.float64),
                         method=method, options={"step_size": h})[-1]
        errs.append((y - exact).abs().max().item())
    slope = np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(slope - tab.order) < 0.3, (method, slope, errs)


@pytest.mark.parametrize("method", DENSE)
def test_dense_output_order(method):
    """The interpolant's local error shrinks like h^(p*+1), p* its order (3 for bosh3, 4 otherwise)."""
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    errs, hs = [], [0.2, 0.1, 0.05]
    for h in hs:
        # one step of size h, output in the middle of it
        t = torch.tensor([0.0, 0.37 * h, h], dtype=torch.float64)
        y = ndode.odeint(vdp, y0, t, method=method, rtol=1e3, atol=1e3, options={"first_step": h})[1]
        ref = scipy_ref(vdp_np, [2.0, 0.0], [0.0, 0.37 * h])[-1]
        errs.append((y - ref).abs().max().item())
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    expected = (3 if method == "bosh3" else 4) + 1
    assert slope > expected - 0.3, (method, slope, errs)


# ------------------------------------------------------------------ accuracy


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_exponential_decay_and_oscillator(method, dtype, device):
    t = torch.linspace(0, 3, 7, dtype=dtype, device=device)
    lam = torch.tensor([0.5, 1.0, 2.0], dtype=dtype, device=device)
    tol = 1e-8 if dtype == torch.float64 else 1e-5
    o = opts_for(method, 1e-3)
    ys = ndode.odeint(lambda t, y: -lam * y, torch.ones(3, dtype=dtype, device=device), t, rtol=tol, atol=tol,
                      method=method, options=o)
    exact = torch.exp(-t[:, None] * lam)
    # fehlberg2's embedded first-order estimate (coefficient 1/512) underrates its error: a looser bound
    bound = {"euler": 5e-3, "midpoint": 1e-5, "heun": 1e-5, "heun2": 1e-5, "fehlberg2": 5e-3}.get(
        method, 50 * tol if dtype == torch.float64 else 1e-4)
    assert ys.dtype == dtype and ys.shape == (7, 3) and ys.device == device
    assert (ys - exact).abs().max() < bound
    # harmonic oscillator y'' = -y
    ys = ndode.odeint(lambda t, y: torch.stack([y[1], -y[0]]), torch.tensor([1.0, 0.0], dtype=dtype, device=device), t,
                      rtol=tol, atol=tol, method=method, options=o)
    exact = torch.stack([torch.cos(t), -torch.sin(t)], dim=1)
    assert (ys - exact).abs().max() < bound


@pytest.mark.parametrize("method", [m for m in ADAPTIVE if ndode.TABLEAUS[m].order >= 3])  # 2nd order: 10⁶ steps
def test_linear_system_against_matrix_exp(method):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(10, 10, generator=g, dtype=torch.float64) / 3 - 0.5 * torch.eye(10, dtype=torch.float64)
    y0 = torch.randn(10, generator=g, dtype=torch.float64)
    t = torch.linspace(0, 2, 9, dtype=torch.float64)
    ys = ndode.odeint(lambda t, y: A @ y, y0, t, rtol=1e-10, atol=1e-12, method=method)
    exact = torch.stack([torch.linalg.matrix_exp(A * ti) @ y0 for ti in t])
    assert (ys - exact).abs().max() < 1e-7


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
@pytest.mark.parametrize("problem", list(NONLINEAR))
@pytest.mark.parametrize("backward", [False, True])
def test_nonlinear_against_scipy_and_tolerance_proportionality(method, problem, backward):
    f, f_np, y0, T = NONLINEAR[problem]
    ts = np.linspace(0, T, 6)
    if backward:  # start from the end state of the forward reference and integrate back
        y0 = scipy_ref(f_np, y0, [0.0, T])[-1].tolist()
        ts = ts[::-1].copy()
    ref = scipy_ref(f_np, y0, list(ts))
    errs = []
    for tol in [1e-4, 1e-6, 1e-8]:
        ys = ndode.odeint(f, torch.tensor(y0, dtype=torch.float64), torch.tensor(ts), rtol=tol, atol=tol, method=method)
        errs.append((ys - ref).abs().max().item())
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < (1e-4 if backward else 1e-5)
    # float32 gives float32 results, accurate to single precision at a loose tolerance
    ys32 = ndode.odeint(f, torch.tensor(y0, dtype=torch.float32), torch.tensor(ts, dtype=torch.float32),
                        rtol=1e-5, atol=1e-5, method=method)
    assert ys32.dtype == torch.float32
    # backward in time the Van der Pol limit cycle repels, amplifying single-precision rounding
    assert (ys32.double() - ref).abs().max() < (5e-2 if backward else 5e-3)


def test_batch_shape_and_tuple_state(device):
    y0 = torch.randn(4, 3, 2, dtype=torch.float64).to(device)
    t = torch.linspace(0, 1, 3, dtype=torch.float64, device=device)
    ys = ndode.odeint(lambda t, y: -y, y0, t)
    assert ys.shape == (3, 4, 3, 2)
    assert torch.allclose(ys[-1], y0 * math.exp(-1), atol=1e-8)

    def f(t, state):
        z, logp = state
        return (-z, -torch.ones_like(logp) * t)

    z, logp = ndode.odeint(f, (y0, torch.zeros(4, 1, dtype=torch.float64, device=device)), t)
    assert z.shape == (3, 4, 3, 2) and logp.shape == (3, 4, 1) and logp.device == device
    assert torch.allclose(logp[-1], torch.full((4, 1), -0.5, dtype=torch.float64, device=device), atol=1e-8)
    # times as Python floats (a model's constant times): the same solve, nothing read back from the device
    sol = ndode.solve(f, (y0, torch.zeros(4, 1, dtype=torch.float64, device=device)), t.tolist())
    assert torch.equal(sol.ys[1], logp) and torch.equal(sol.ts, t)


def test_single_output_time_returns_y0():
    y0 = torch.tensor([1.0, 2.0])
    sol = ndode.solve(lambda t, y: y, y0, torch.tensor([0.3]))
    assert sol.ys.shape == (1, 2) and torch.equal(sol.ys[0], y0) and sol.stats.nfe == 0


# ------------------------------------------------------------------ dense output


@pytest.mark.parametrize("method", DENSE)
def test_dense_output_matches_forced_steps(method):
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.linspace(0, 6, 41, dtype=torch.float64)
    tol = 1e-6
    dense = ndode.solve(vdp, y0, t, rtol=tol, atol=tol, method=method)
    # forced: solve interval by interval, so every output time is a step end
    forced = [y0]
    for a, b in zip(t[:-1], t[1:]):
        forced.append(ndode.odeint(vdp, forced[-1], torch.stack([a, b]), rtol=tol, atol=tol, method=method)[-1])
    forced = torch.stack(forced)
    ref = scipy_ref(vdp_np, [2.0, 0.0], t.tolist())
    err_dense = (dense.ys - ref).abs().max().item()
    err_forced = (forced - ref).abs().max().item()
    assert err_dense < 10 * max(err_forced, tol), (err_dense, err_forced)
    assert (dense.ys - forced).abs().max() < 20 * tol
    # and output times did not force steps: the same steps as a solve with no intermediate outputs
    plain = ndode.solve(vdp, y0, t[[0, -1]], rtol=tol, atol=tol, method=method)
    assert (dense.stats.n_accepted, dense.stats.n_rejected) == (plain.stats.n_accepted, plain.stats.n_rejected)


@pytest.mark.parametrize("method", DENSE)
def test_many_outputs_per_step_equal_one_at_a_time(method):
    """Several outputs inside one step are read in one contraction (``interpolate_many``): the values and their
    gradients must be those of the per-output interpolant, which a solve with one interior output uses."""
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64, requires_grad=True)
    t = torch.cat([torch.zeros(1), torch.sort(torch.rand(400, generator=torch.Generator().manual_seed(0)) * 6).values,
                   torch.full((1,), 6.0)]).double()
    many = ndode.solve(vdp, y0, t, rtol=1e-4, atol=1e-4, method=method)
    assert 3 * many.stats.n_accepted < len(t)  # so steps hold many outputs each
    for k in (1, 57, 200, 399):
        one = ndode.solve(vdp, y0, t[[0, k, -1]], rtol=1e-4, atol=1e-4, method=method)
        assert torch.allclose(many.ys[k], one.ys[1], rtol=1e-13, atol=1e-13)
        g_many, = torch.autograd.grad(many.ys[k].sum(), y0, retain_graph=True)
        g_one, = torch.autograd.grad(one.ys[1].sum(), y0)
        assert torch.allclose(g_many, g_one, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4", "euler"])
def test_gradcheck_direct_backprop(method, device):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double().to(device)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, device=device)
    o = {"step_size": 0.1}  # a fixed grid: adaptive step choices are not differentiable
    params = list(net.parameters())

    def fn(y0, *ps):
        with torch.no_grad():
            for p, v in zip(params, ps):
                p.copy_(v)

        def f(t, y):
            return torch.nn.functional.linear(
                torch.tanh(torch.nn.functional.linear(y, ps[0], ps[1])), ps[2], ps[3]
            )

        return ndode.odeint(f, y0, t, method=method, options=o)

    y0 = torch.randn(3, 2, dtype=torch.float64).to(device).requires_grad_()
    ps = [p.detach().clone().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(fn, (y0, *ps))


def test_gradients_flow_through_adaptive_solve():
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2).double()
    y0 = torch.randn(2, dtype=torch.float64, requires_grad=True)
    ys = ndode.odeint(lambda t, y: net(y), y0, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=1e-10, atol=1e-10)
    ys[-1].sum().backward()
    expected = torch.linalg.matrix_exp(net.weight.detach()).T @ torch.ones(2, dtype=torch.float64)
    # y(1) = e^W y0 + (e^W - I) W^{-1} b, so d sum(y(1)) / d y0 = e^{W^T} 1
    assert torch.allclose(y0.grad, expected, atol=1e-7)


# ------------------------------------------------------------------ NFE vs SciPy


@pytest.mark.parametrize("problem", list(NONLINEAR))
@pytest.mark.parametrize("tol", [1e-3, 1e-6, 1e-9])
def test_nfe_matches_scipy_rk45(problem, tol):
    f, f_np, y0, T = NONLINEAR[problem]
    r = solve_ivp(f_np, (0, T), y0, method="RK45", rtol=tol, atol=tol)
    sol = ndode.solve(f, torch.tensor(y0, dtype=torch.float64), torch.tensor([0.0, T], dtype=torch.float64), rtol=tol, atol=tol)
    assert abs(sol.stats.nfe - r.nfev) <= 0.15 * r.nfev, (sol.stats, r.nfev)
    assert sol.stats.nfe == 2 + 6 * sol.stats.n_steps  # initial f, one probe for the first step, 6 per FSAL step


# ------------------------------------------------------------------ bad input

Y0 = torch.tensor([1.0, 2.0])
T = torch.tensor([0.0, 1.0])
F = lambda t, y: -y  # noqa: E731


@pytest.mark.parametrize(
    "kwargs, exc, msg",
    [
        (dict(method="rk45"), ValueError, r"unknown method 'rk45'; known methods: euler, midpoint"),
        (dict(t=torch.tensor([0.0, 1.0, 1.0])), ValueError, r"strictly increasing or strictly decreasing; t\[1\]=1.0 and t\[2\]=1.0"),
        (dict(t=torch.tensor([0.0, 1.0, 0.5])), ValueError, "strictly increasing or strictly decreasing"),
        (dict(t=torch.tensor([])), ValueError, "at least 1 element"),
        (dict(t=torch.zeros(2, 2)), ValueError, "1-D tensor"),
        (dict(t=[0.0, "1.0"]), TypeError, "t must be a 1-D torch.Tensor of times or a non-empty list of Python floats"),
        (dict(t=torch.tensor([0.0, float("nan")])), ValueError, "t must be finite"),
        (dict(rtol=-1e-3), ValueError, "rtol must be a non-negative finite number, got -0.001"),
        (dict(atol=float("inf")), ValueError, "atol must be a non-negative finite number"),
        (dict(rtol="1e-3"), TypeError, "rtol must be a non-negative finite number"),
        (dict(rtol=0.0, atol=0.0), ValueError, "both 0"),
        (dict(y0=torch.tensor([1.0, float("nan")])), ValueError, "y0 contains non-finite"),
        (dict(y0=torch.tensor([1, 2])), TypeError, "floating dtype"),
        (dict(y0=[1.0, 2.0]), TypeError, "y0 must be a tensor or a non-empty tuple"),
        (dict(func=lambda t, y: y[:1]), ValueError, r"func returned shape \(1,\) at t=0.0, but the state has shape \(2,\)"),
        (dict(func=lambda t, y: y.double()), TypeError, "func returned dtype torch.float64"),
        (dict(func=lambda t, y: 3.0), TypeError, "func must return a tensor"),
        (dict(func="f"), TypeError, "func must be callable"),
        (dict(options={"stepsize": 0.1}), ValueError, r"unknown options \['stepsize'\] for adaptive method 'dopri5'; allowed: first_step"),
        (dict(method="rk4", options={"step_size": 0.1, "grid_constructor": lambda f, y, t: t}), ValueError,
         r"options\['step_size'\] and options\['grid_constructor'\] both given"),
        (dict(method="rk4", options={"grid_constructor": 1.0}), TypeError, r"options\['grid_constructor'\] must be callable"),
        (dict(method="rk4", options={"perturb": 1}), TypeError, r"options\['perturb'\] must be True or False"),
        (dict(options={"norm": "rms"}), TypeError, r"options\['norm'\] must be callable"),
        (dict(options={"min_step": 2.0, "max_step": 1.0}), ValueError, r"options\['min_step'\]=2.0 exceeds"),
        (dict(options={"jump_t": [0.5, float("nan")]}), ValueError, r"options\['jump_t'\] must be a 1-D tensor or list"),
        (dict(options={"jump_t": [0.5], "step_t": [0.5]}), ValueError, "share times"),
        (dict(method="rk4", options={"step_size": -0.1}), ValueError, r"options\['step_size'\] must be a finite number > 0"),
        (dict(method="rk4", options={"step_size": 0.1, "first_step": 0.1}), ValueError, r"unknown options \['first_step'\] for fixed-step"),
        (dict(options={"safety": 1.5}), ValueError, r"options\['safety'\] must be a finite number in \(0.0, 1.0\]"),
        (dict(options={"max_num_steps": 2.5}), ValueError, r"options\['max_num_steps'\] must be an integer"),
        (dict(options={"step_size": 0.1, "first_step": 0.1}), ValueError, "do not apply with"),
        (dict(options=[1]), TypeError, "options must be a dict"),
    ],
)
def test_bad_input_is_named(kwargs, exc, msg):
    args = dict(func=F, y0=Y0, t=T)
    args.update(kwargs)
    func, y0, t = args.pop("func"), args.pop("y0"), args.pop("t")
    with pytest.raises(exc, match=msg):
        ndode.odeint(func, y0, t, **args)


def test_step_size_underflow_names_t_dt_method():
    # y' = y^2 from y(0)=1 blows up at t=1
    with pytest.raises(ndode.SolverError, match=r"step size underflow at t=(0\.99|1\.0)\d*, dt=\S+ \(method 'dopri5'\)"):
        ndode.odeint(lambda t, y: y**2, torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64))


def test_non_finite_state_names_t_dt_method():
    def f(t, y):  # fine until t = 1, then nan
        return -y if t < 1 else y * float("nan")

    with pytest.raises(ndode.SolverError, match=r"non-finite state \(nan or inf\) at t=2.0, dt=0.5 \(method 'rk4'\)"):
        ndode.odeint(f, Y0, torch.tensor([0.0, 2.0]), method="rk4", options={"step_size": 0.5})
    with pytest.raises(ndode.SolverError, match=r"step size underflow after non-finite values .* at t=0.99\d*, dt=\S+ \(method 'dopri5'\)"):
        ndode.odeint(f, Y0, torch.tensor([0.0, 2.0]))
    with pytest.raises(ndode.SolverError, match=r"non-finite values \(nan or inf\) at the initial state"):
        ndode.odeint(lambda t, y: y * float("nan"), Y0, T)


def test_max_num_steps_names_t_dt_method():
    with pytest.raises(ndode.SolverError, match=r"max_num_steps=5 reached before t=10.0 at t=\S+, dt=\S+ \(method 'tsit5'\)"):
        ndode.odeint(vdp, torch.tensor([2.0, 0.0]), torch.tensor([0.0, 10.0]), method="tsit5", options={"max_num_steps": 5})


# ------------------------------------------------------------------ edge cases (issue 9)


def test_tuple_component_of_wrong_shape_or_dtype_is_named():
    z0, l0 = torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    # the same number of entries: packed into one flat tensor it would pass and scramble the state
    with pytest.raises(ValueError, match=r"component 0 .*shape \(2, 4\).*y0\[0\] has shape \(4, 2\)"):
        ndode.odeint(lambda t, s: (s[0].T, s[1]), (z0, l0), t)
    with pytest.raises(TypeError, match=r"component 1 .*dtype torch.float32.*y0\[1\] has dtype torch.float64"):
        ndode.odeint(lambda t, s: (s[0], s[1].float()), (z0, l0), t)
    with pytest.raises(TypeError, match=r"func must return a tuple of 2 tensors.*returned a Tensor"):
        ndode.odeint(lambda t, s: s[0], (z0, l0), t)


@pytest.mark.parametrize("t_end", [0.3, 1.0, -0.7])
def test_step_ending_ulps_short_of_the_end(t_end):
    # a first step that ends 1-2 ulp short of the last time: the sliver left must be snapped, not stepped
    h = abs(t_end)
    for _ in range(2):
        h = math.nextafter(h, 0.0)
    t = torch.tensor([0.0, t_end], dtype=torch.float64)
    y0 = torch.tensor([1.0], dtype=torch.float64)
    sol = ndode.solve(lambda t, y: -y, y0, t, rtol=1e-3, atol=1e-3, options={"first_step": h})
    assert sol.stats.n_accepted == 1 and sol.stats.n_rejected == 0  # the sliver costs no step
    assert torch.allclose(sol.ys[-1], torch.exp(-t[-1:]), rtol=2e-3)


def test_autocast_output_is_cast_to_the_state_dtype(device):
    # Under torch.autocast a Linear computes in bfloat16 while the state stays float32 (how ODE-Nets train on
    # GPUs): the solver casts func's output to the state's dtype. Without autocast that dtype is still an error.
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 3).to(device)
    y0 = torch.randn(4, 3, device=device)
    t = torch.tensor([0.0, 0.5, 1.0], device=device)
    ref = ndode.odeint(lambda t, y: torch.tanh(lin(y)), y0, t, rtol=1e-4, atol=1e-4)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        assert lin(y0).dtype == torch.bfloat16
        ys = ndode.odeint(lambda t, y: torch.tanh(lin(y)), y0, t, rtol=1e-4, atol=1e-4)
        z, logp = ndode.odeint(lambda t, s: (lin(s[0]), lin(s[0]).sum(-1, keepdim=True)),
                               (y0, torch.zeros(4, 1, device=device)), t, rtol=1e-4, atol=1e-4)
        sol = ndode.solve(lambda t, y: torch.tanh(lin(y)), y0.requires_grad_(), t, rtol=1e-4, atol=1e-4,
                          adjoint=ndode.BacksolveAdjoint(params=tuple(lin.parameters())))
        sol.ys.sum().backward()  # the backward solve under autocast too
    assert ys.dtype == z.dtype == logp.dtype == sol.ys.dtype == y0.grad.dtype == torch.float32
    assert (ys - ref).abs().max() < 5e-2  # bfloat16 keeps 8 bits of mantissa
    assert torch.isfinite(y0.grad).all() and lin.weight.grad.dtype == torch.float32
    with pytest.raises(TypeError, match="func returned dtype torch.bfloat16 at t=0.0, but the state has dtype"):
        ndode.odeint(lambda t, y: lin(y).bfloat16(), y0.detach(), t)
    with pytest.raises(TypeError, match=r"component 1 .*dtype torch.bfloat16"):
        ndode.odeint(lambda t, s: (s[0], s[1].bfloat16()), (y0.detach(), torch.zeros(4, 1, device=device)), t)

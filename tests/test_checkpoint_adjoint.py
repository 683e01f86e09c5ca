"""The checkpointed adjoint: direct backprop's gradients exactly, memory of one state per step, capped by revolve."""

import pytest
import torch
from _fields import D, MLPField, functional_field

import ndode
from ndode.memory import saved_tensor_bytes


def _grads(m, y0, t, w, adjoint, **kw):
    for p in [y0, *m.parameters()]:
        p.grad = None
    sol = ndode.solve(m, y0, t, adjoint=adjoint, **kw)
    (sol.ys * w).sum().backward()
    return [y0.grad.clone()] + [p.grad.clone() for p in m.parameters()], sol.stats


ADAPTIVE = ["dopri5", "tsit5", "bosh3"]
FIXED = ["euler", "midpoint", "heun", "rk4"]
CASES = ([(m, None) for m in ADAPTIVE] + [(m, {"step_size": 0.13}) for m in FIXED]
         + [("dopri5", {"step_size": 0.3})])  # an adaptive tableau on a fixed grid


@pytest.mark.parametrize("method, options", CASES)
@pytest.mark.parametrize("backwards", [False, True])
@pytest.mark.parametrize("cap", [None, 3])
def test_matches_direct_backprop_exactly(method, options, backwards, cap, device):
    # 29 irregular output times, most of them between steps (dense output), a loss on each; in float64 the
    # gradients are direct backprop's up to rounding, whether every state is kept or revolve recomputes them
    assert method in ndode.METHODS
    m = MLPField(seed=1).to(device)
    y0 = torch.randn(4, 2, dtype=D, generator=torch.Generator().manual_seed(2)).to(device).requires_grad_()
    t = torch.cat([torch.zeros(1, dtype=D),
                   torch.rand(28, dtype=D, generator=torch.Generator().manual_seed(3)).sort().values * 2.5 + 0.01])
    t = (-t if backwards else t).to(device)
    w = torch.randn(29, 4, 2, dtype=D, generator=torch.Generator().manual_seed(4)).to(device)
    kw = dict(rtol=1e-6, atol=1e-8, method=method, options=options)
    direct, sd = _grads(m, y0, t, w, None, **kw)
    ck, sc = _grads(m, y0, t, w, ndode.CheckpointAdjoint(max_stored_steps=cap), **kw)
    assert sc.nfe == sd.nfe and sc.n_accepted == sd.n_accepted > 3
    for a, b in zip(ck, direct):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10), (a - b).abs().max()


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_many_outputs_per_step_match_direct_backprop(method):
    # 300 output times in a few steps: both passes read a step's outputs in one contraction (interpolate_many)
    m = MLPField(seed=1)
    y0 = torch.randn(4, 2, dtype=D, generator=torch.Generator().manual_seed(2)).requires_grad_()
    t = torch.cat([torch.zeros(1, dtype=D), torch.rand(299, dtype=D, generator=torch.Generator().manual_seed(3)).sort().values * 2.5])
    w = torch.randn(300, 4, 2, dtype=D, generator=torch.Generator().manual_seed(4))
    kw = dict(rtol=1e-5, atol=1e-7, method=method)
    direct, sd = _grads(m, y0, t, w, None, **kw)
    ck, sc = _grads(m, y0, t, w, ndode.CheckpointAdjoint(), **kw)
    assert 3 * sd.n_accepted < len(t)
    for a, b in zip(ck, direct):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10), (a - b).abs().max()


@pytest.mark.parametrize("cap", [None, 2])
def test_tuple_state_matches_direct_backprop(cap):
    m = MLPField(seed=6)

    class Joint(torch.nn.Module):  # a CNF-like pair (z, log p)
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, t, state):
            z, _ = state
            dz = self.m(t, z)
            return dz, -(dz**2).sum(-1, keepdim=True)

    f = Joint()
    z0 = torch.randn(4, 2, dtype=D, generator=torch.Generator().manual_seed(7)).requires_grad_()
    l0 = torch.zeros(4, 1, dtype=D, requires_grad=True)
    t = torch.tensor([0.0, 0.7, 0.71, 1.5], dtype=D)

    def grads(adjoint):
        for p in [z0, l0, *f.parameters()]:
            p.grad = None
        z, logp = ndode.solve(f, (z0, l0), t, rtol=1e-5, atol=1e-5, adjoint=adjoint).ys
        assert z.shape == (4, 4, 2) and logp.shape == (4, 4, 1)
        (z[-1].sin().sum() + logp[1:].sum()).backward()
        return [z0.grad.clone(), l0.grad.clone()] + [p.grad.clone() for p in f.parameters()]

    for a, b in zip(grads(ndode.CheckpointAdjoint(max_stored_steps=cap)), grads(None)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), (a - b).abs().max()


@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", {"step_size": 0.02})])
def test_gradcheck_y0_params_and_t(method, options):
    m = MLPField(hidden=4)
    w1, b1, w2 = (p.detach().clone().requires_grad_() for p in m.parameters())
    y0 = torch.randn(2, 2, dtype=D, generator=torch.Generator().manual_seed(1)).requires_grad_()
    t = torch.tensor([0.0, 0.4, 0.9, 1.3], dtype=D, requires_grad=True)
    weights = torch.randn(4, 2, 2, dtype=D, generator=torch.Generator().manual_seed(2))

    def loss(y0, t, w1, b1, w2):
        ys = ndode.odeint_adjoint(functional_field(w1, b1, w2), y0, t, rtol=1e-10, atol=1e-10, method=method,
                                  options=options, adjoint_params=(w1, b1, w2), adjoint="checkpoint")
        return (ys * weights).sum()

    # t: the backsolve adjoint's boundary terms, exact for the ODE, so as close as the solve is to it (O(h^4) for rk4)
    tol = dict(atol=1e-6, rtol=1e-4) if method == "rk4" else dict(atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradcheck(loss, (y0, t, w1, b1, w2), eps=1e-6, **tol)


def test_time_gradients_match_the_backsolve_adjoint():
    m = MLPField(seed=5)
    y0 = torch.randn(3, 2, dtype=D, generator=torch.Generator().manual_seed(6))
    w = torch.randn(5, 3, 2, dtype=D, generator=torch.Generator().manual_seed(7))
    out = []
    for adjoint in (ndode.BacksolveAdjoint(), ndode.CheckpointAdjoint()):
        t = torch.tensor([0.0, 0.3, 0.35, 1.0, 2.0], dtype=D, requires_grad=True)
        (ndode.solve(m, y0, t, rtol=1e-10, atol=1e-10, adjoint=adjoint).ys * w).sum().backward()
        out.append(t.grad)
    assert torch.allclose(out[0], out[1], rtol=1e-7, atol=1e-9), out


def test_output_times_cost_nothing_in_the_backward_pass():
    # dense outputs are differentiated inside the step that made them: the backward pass recomputes each
    # accepted step once (7 dopri5 stages), for 2 output times as for 200
    m = MLPField(seed=8)
    y0 = torch.randn(16, 2, dtype=D, generator=torch.Generator().manual_seed(9))
    stats = []
    for n in (2, 200):
        sol = ndode.solve(m, y0, torch.linspace(0, 5, n, dtype=D), rtol=1e-6, atol=1e-8,
                          adjoint=ndode.CheckpointAdjoint(params=list(m.parameters())))
        sol.ys.sum().backward()
        stats.append(sol.stats)
    assert stats[0].n_accepted == stats[1].n_accepted
    for s in stats:
        assert s.nfe_backward == 7 * s.n_accepted and s.n_accepted_backward == s.n_accepted


def _steps_memory(adjoint, n_steps, hidden=64, batch=16):
    m = MLPField(dim=2, hidden=hidden, seed=10)
    y0 = torch.randn(batch, 2, dtype=D, generator=torch.Generator().manual_seed(11))
    return saved_tensor_bytes(
        lambda: ndode.solve(m, y0, [0.0, 1.0], method="rk4", options={"step_size": 1.0 / n_steps},
                            adjoint=adjoint).ys,
        ignore=list(m.parameters()),
    )


def test_memory_grows_by_the_state_per_step_not_by_activations():
    state = 16 * 2 * 8  # bytes of one [16, 2] float64 state
    ck = {n: _steps_memory(ndode.CheckpointAdjoint(), n) for n in (10, 1000)}
    direct = {n: _steps_memory(None, n) for n in (10, 1000)}
    # one saved state per step (the state it started from), nothing else
    assert ck[10] == 10 * state and ck[1000] == 1000 * state
    # backprop keeps every stage's activations: hidden width 64 ≫ the state's 2, four stages a step
    per_step_direct = (direct[1000] - direct[10]) / 990
    assert per_step_direct > 50 * state
    # a cap bounds it whatever the number of steps
    capped = [_steps_memory(ndode.CheckpointAdjoint(max_stored_steps=5), n) for n in (10, 1000)]
    assert capped[0] <= 5 * state and capped[1] <= 5 * state


def test_revolve_recomputes_few_steps():
    # 60 rk4 steps with 1, 4 and unlimited states: 1 state recomputes quadratically (n(n+1)/2 steps),
    # 4 states need a few sweeps (revolve: C(4 + r, 4) >= 60 at r = 4), unlimited one sweep
    m = MLPField(seed=12)
    y0 = torch.randn(3, 2, dtype=D, generator=torch.Generator().manual_seed(13))
    nfe = {}
    grads = {}
    for cap in (None, 4, 1):
        m.zero_grad()
        sol = ndode.solve(m, y0, [0.0, 3.0], method="rk4", options={"step_size": 0.05},
                          adjoint=ndode.CheckpointAdjoint(max_stored_steps=cap))
        sol.ys[-1].sum().backward()
        nfe[cap], grads[cap] = sol.stats.nfe_backward, [p.grad.clone() for p in m.parameters()]
    assert nfe[None] == 4 * 60 and nfe[1] == 4 * 60 * 61 // 2
    assert nfe[4] <= 4 * 60 * 5
    for cap in (4, 1):
        for a, b in zip(grads[cap], grads[None]):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_bad_input_is_named():
    m = MLPField()
    y0, t = torch.ones(1, 2, dtype=D), torch.tensor([0.0, 1.0], dtype=D)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=f"max_stored_steps must be None .* or an integer >= 1, got {bad!r}"):
            ndode.CheckpointAdjoint(max_stored_steps=bad)
    with pytest.raises(ValueError, match="adjoint_rtol, adjoint_method set the backsolve adjoint's backward solve"):
        ndode.odeint_adjoint(m, y0, t, adjoint="checkpoint", adjoint_rtol=1e-3, adjoint_method="rk4")
    with pytest.raises(ValueError, match="adjoint must be 'backsolve' or 'checkpoint', got 'revolve'"):
        ndode.odeint_adjoint(m, y0, t, adjoint="revolve")
    with pytest.raises(TypeError, match="not a torch.nn.Module.*pass adjoint_params"):
        ndode.odeint_adjoint(lambda t, y: -y, y0, t, adjoint="checkpoint")


@pytest.mark.parametrize("cap", [1, 3, 6])
def test_revolve_holds_at_most_the_cap_in_the_backward_pass(cap, monkeypatch):
    # the forward pass keeps <= cap states; the backward pass recomputes with <= cap more: each stretch is reversed
    # holding cap states, its own (kept) start included, plus the step being advanced (its input and its output)
    import weakref

    from ndode.ode import integrator as _integrator

    live, peak, backward = [], [0], [False]
    step = _integrator._Integrator.step

    def counting_step(self, t, y, h, k0):
        out = step(self, t, y, h, k0)
        if backward[0] and not torch.is_grad_enabled():  # a state recomputed by the backward pass
            live.append(weakref.ref(out[0]))
            peak[0] = max(peak[0], sum(r() is not None for r in live))
        return out

    monkeypatch.setattr(_integrator._Integrator, "step", counting_step)
    m = MLPField(seed=14)
    y0 = torch.randn(3, 2, dtype=D, generator=torch.Generator().manual_seed(15))
    sol = ndode.solve(m, y0, [0.0, 3.0], method="rk4", options={"step_size": 0.05},
                      adjoint=ndode.CheckpointAdjoint(max_stored_steps=cap))
    kept = saved_tensor_bytes(lambda: ndode.solve(m, y0, [0.0, 3.0], method="rk4", options={"step_size": 0.05},
                                                  adjoint=ndode.CheckpointAdjoint(max_stored_steps=cap)).ys,
                              ignore=list(m.parameters()))
    assert kept <= cap * y0.numel() * 8
    backward[0] = True
    sol.ys[-1].sum().backward()
    assert 0 < peak[0] <= (cap - 1) + 2 and sol.stats.n_accepted_backward == 60


@pytest.mark.parametrize("options", [{"jump_t": [0.5]}, {"grid_constructor": lambda f, y0, t: t}])
def test_options_the_recomputation_cannot_follow_are_refused(options):
    f = torch.nn.Linear(2, 2).double()
    y0 = torch.ones(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="CheckpointAdjoint does not support options"):
        ndode.solve(lambda t, y: f(y), y0, [0.0, 1.0], method="dopri5" if "jump_t" in options else "rk4",
                    options=options, adjoint=ndode.CheckpointAdjoint(params=list(f.parameters())))

"""The checkpointed adjoint: the exact gradient of the discrete solve, without holding its graph.

Forward: an ordinary solve without a graph that records every accepted step's
start time ``t``, size ``h`` and the outputs it produced (host floats), and
keeps the state ``y`` each step started from. Backward: the steps are walked
in reverse; each is recomputed from its saved ``y`` with autograd (all its
stages, and the dense outputs it produced, differentiated inside it) and
backpropagated at once, so only one step's graph exists at a time. Step sizes
are constants, as in direct backpropagation (the controller's decisions are
not differentiated there either), so the gradients are direct backprop's.

This is the "Adaptive Checkpoint Adjoint" (Zhuang et al. 2020, ACA) and
diffrax's ``RecursiveCheckpointAdjoint``; the latter learnt from, not copied.

With ``max_stored_steps`` the forward pass keeps at most that many states
(every ``2^k``-th step's, thinned as the solve goes), and each stretch between
two of them is reversed by binomial checkpointing (Griewank 1992; Griewank &
Walther 2000, "revolve") with at most ``max_stored_steps`` further states:
the fewest recomputed steps for that memory.

Time gradients use the same boundary terms as the backsolve adjoint
(``ndode.adjoint``): ``∂L/∂t_i = g_iᵀ f(t_i, y_i)`` for ``i ≥ 1`` and
``∂L/∂t_0 = -a(t_0⁺)ᵀ f(t_0, y_0)`` (one evaluation per output time).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .adjoint import _check_adjoint_params
from .ode.methods import RungeKuttaMethod
from .ode.plan import Adjoint
from .ode.types import Solution, SolverStats

__all__ = ["CheckpointAdjoint"]


class _Tape:
    """What the forward pass recorded: every accepted step's (t, h, outputs), and the states kept."""

    def __init__(self, cap):
        self.cap = cap  # None: keep every state
        self.steps = []  # (t, h, [(output index, theta or None)])
        self.kept = {}  # step index -> the state that step started from
        self.stride = 1

    def record(self, t, h, y, outs):
        k = len(self.steps)
        self.steps.append((t, h, outs))
        if k % self.stride:
            return
        self.kept[k] = y
        if self.cap is not None and len(self.kept) > self.cap:
            # thin out to every other kept state: a stride of 2^j steps, evenly spread, y0 always kept
            self.stride *= 2
            self.kept = {j: s for j, s in self.kept.items() if j % self.stride == 0}


class _Checkpointed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, cap, t, y0, *params):
        tape = _Tape(cap)
        with torch.no_grad():
            ys = torch.stack(plan.run(y0, on_step=tape.record))
        ctx.plan, ctx.tape = plan, tape
        ctx.kept_at = sorted(tape.kept)
        # The kept states go through save_for_backward, so saved-tensor hooks (ndode.memory) see them. The
        # parameters are held as they are: autograd must differentiate the very tensors func uses (a hook's
        # unpacked copy would get no gradient), and they exist anyway. ys only serve the time gradients.
        want_t = ctx.needs_input_grad[2]
        ctx.params, ctx.t_like = params, (t.dtype, t.device) if want_t else None
        ctx.save_for_backward(*(tape.kept[k] for k in ctx.kept_at), *((ys,) if want_t else ()))
        tape.kept = {}  # they live in the saved tensors now
        return ys

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ys):
        plan, tape, params = ctx.plan, ctx.tape, ctx.params
        saved = ctx.saved_tensors
        n_kept = len(ctx.kept_at)
        kept = list(saved[:n_kept])
        stats: SolverStats = plan.stats
        bstats = SolverStats()
        p = plan.packing
        # replays the forward solve's recorded steps (no error control, so no norm: the forward solve's own,
        # plan.norm_reduce included, already chose the steps)
        integ = plan.method.integrator(p.wrap(plan.func), plan.rtol, plan.atol, plan.options, bstats, p.dtype,
                                       p.device, phase="backward pass")
        steps = tape.steps
        inputs_tail = params
        grad_params: list[torch.Tensor | None] = [None] * len(params)
        a = torch.zeros_like(grad_ys[0])  # ∂L/∂y at the end of the step being reversed
        # FSAL methods (dopri5, tsit5, bosh3) start an adaptive step with the previous step's last stage,
        # f(t_prev + h_prev, y): that stage is an input of the step (its value recomputed without a graph) and
        # its gradient gk goes back to the previous step, where the stage is part of the recomputed graph
        assert isinstance(plan.method, RungeKuttaMethod)  # run() refused the others
        tab = plan.method.tab
        fsal = tab.fsal and "step_size" not in plan.options
        c_last = tab.c[-1]
        gk = None

        def k0_time(k):
            if fsal and k > 0:
                tp, hp, _ = steps[k - 1]
                return tp + c_last * hp
            return steps[k][0]

        def advance(k, y):  # step k from y, without a graph
            tk, h, _ = steps[k]
            with torch.no_grad():
                return integ.step(tk, y, h, integ.f(k0_time(k), y))[0]

        def reverse_step(k, y_start):
            nonlocal a, gk
            tk, h, outs = steps[k]
            chained = fsal and k > 0
            with torch.enable_grad():
                y = y_start.detach().requires_grad_(True)
                if chained:
                    with torch.no_grad():
                        k0 = integ.f(k0_time(k), y_start)
                    k0.requires_grad_(True)
                else:
                    k0 = integ.f(tk, y)
                y_new, ks = integ.step(tk, y, h, k0)
                outputs, grads = [y_new], [a]
                if gk is not None:
                    outputs.append(ks[-1])
                    grads.append(gk)
                inside = [(i, theta) for i, theta in outs if theta is not None]
                if outs and outs[-1][1] is None:  # the step's end is an output time
                    grads[0] = grads[0] + grad_ys[outs[-1][0]]
                if len(inside) > 2:  # as the forward pass: one contraction for many outputs
                    outputs.append(integ.interpolate_many(y, h, ks, [th for _, th in inside]))
                    grads.append(grad_ys[inside[0][0]: inside[-1][0] + 1])
                else:
                    for i, theta in inside:
                        outputs.append(integ.interpolate(y, h, ks, theta))
                        grads.append(grad_ys[i])
                inputs = (y, k0) + inputs_tail if chained else (y,) + inputs_tail
                g = list(torch.autograd.grad(outputs, inputs, grads, allow_unused=True))
            a = torch.zeros_like(y_start) if g[0] is None else g[0]
            if chained:
                gk = torch.zeros_like(y_start) if g[1] is None else g[1]
                del g[1]
            else:
                gk = None
            for j, gp in enumerate(g[1:]):
                if gp is not None:
                    grad_params[j] = gp if grad_params[j] is None else grad_params[j] + gp
            bstats.n_accepted += 1

        def reverse(k0, y0_, k1, slots):
            """Backpropagate through steps k0..k1-1 given the state at k0, holding at most ``slots`` states
            (``y0_`` included): binomial checkpointing, the right part of each split recursively."""
            while k1 > k0:
                n = k1 - k0
                if n <= slots:  # room for every state of the stretch: one sweep forward, then back
                    states = [y0_]
                    for k in range(k0, k1 - 1):
                        states.append(advance(k, states[-1]))
                    for k in range(k1 - 1, k0 - 1, -1):
                        reverse_step(k, states.pop())
                    return
                if slots == 1:  # only the start: recompute up to the last step, each time
                    y = y0_
                    for k in range(k0, k1 - 1):
                        y = advance(k, y)
                    reverse_step(k1 - 1, y)
                    k1 -= 1
                    continue
                # the fewest repetitions r with β(slots, r) = C(slots + r, slots) >= n; the left part takes
                # β(slots, r - 1) steps (slots states, r - 1 repetitions), the right part the rest (slots - 1, r)
                r = 1
                while math.comb(slots + r, slots) < n:
                    r += 1
                m = k0 + min(math.comb(slots + r - 1, slots), n - 1)
                y = y0_
                for k in range(k0, m):
                    y = advance(k, y)
                reverse(m, y, k1, slots - 1)
                del y
                k1 = m

        ends = ctx.kept_at[1:] + [len(steps)]
        slots = tape.cap if tape.cap is not None else 1  # without a cap every step is kept: stretches of 1
        for j in range(n_kept - 1, -1, -1):
            reverse(ctx.kept_at[j], kept.pop(), ends[j], slots)
        grad_y0 = a + grad_ys[0]

        grad_t = None
        if ctx.t_like is not None:
            ys = saved[n_kept]
            times = plan.times
            grad_t = torch.zeros(len(times), dtype=ctx.t_like[0], device=ctx.t_like[1])
            with torch.no_grad():
                for i in range(1, len(times)):
                    fi = integ.f(times[i], ys[i]).reshape(-1)
                    grad_t[i] = torch.dot(grad_ys[i].reshape(-1), fi)
                if len(times) > 1:  # minus the adjoint just after t_0 (a excludes g_0)
                    grad_t[0] = -torch.dot(a.reshape(-1), integ.f(times[0], ys[0]).reshape(-1))
        stats.nfe_backward = bstats.nfe
        stats.n_accepted_backward = bstats.n_accepted
        stats.n_rejected_backward = 0
        grads = [torch.zeros_like(q) if g is None else g for g, q in zip(grad_params, params)]
        return (None, None, grad_t, grad_y0, *grads)


_NOT_RECOMPUTED = ("perturb", "jump_t", "step_t", "grid_constructor")


class CheckpointAdjoint(Adjoint):
    """Exact gradients of the discrete solve by recomputation: ``ndode.solve(..., adjoint=CheckpointAdjoint())``.

    The forward solve runs without a graph and keeps each accepted step's
    starting state; ``backward()`` recomputes the steps one at a time, last
    first, with autograd. Gradients equal direct backpropagation's through the
    same solve (same steps, step sizes held constant) at about the cost of one
    more forward solve; memory is one state per step plus one step's graph,
    not every stage's activations. ``max_stored_steps`` (default: no cap)
    bounds the states the forward pass keeps; the backward pass then
    recomputes stretches by binomial checkpointing with at most as many again.
    ``params``: the tensors to differentiate (default: the parameters of
    ``func``, an ``nn.Module``, that require grad). Gradients also reach ``y0``
    and every entry of ``t`` (the backsolve adjoint's boundary terms).
    """

    def __init__(self, max_stored_steps: int | None = None, *, params: Sequence[torch.Tensor] | None = None):
        if max_stored_steps is not None and (isinstance(max_stored_steps, bool)
                                             or not isinstance(max_stored_steps, int) or max_stored_steps < 1):
            raise ValueError(f"max_stored_steps must be None (no cap) or an integer >= 1, got {max_stored_steps!r}")
        if params is not None:
            _check_adjoint_params(None, params)
        self.max_stored_steps = max_stored_steps
        self.params = params

    def __repr__(self):
        return (f"CheckpointAdjoint(max_stored_steps={self.max_stored_steps}"
                + (f", params=<{len(self.params)} tensors>)" if self.params is not None else ")"))

    def run(self, plan, y0) -> Solution:
        # The backward pass recomputes each recorded step with the plain stepping routine; options that change a
        # step beyond (t, h, y) would make the recomputation differ from the forward solve, so they are refused.
        unsupported = sorted(k for k in _NOT_RECOMPUTED if plan.options.get(k) is not None and plan.options.get(k) is not False)
        if unsupported or not plan.method.own_steps:
            what = ", ".join(f"options[{k!r}]" for k in unsupported) or f"method={plan.method.name!r}"
            raise ValueError(f"CheckpointAdjoint does not support {what}: it recomputes the plain Runge-Kutta steps "
                             "in reverse; use the backsolve adjoint (ndode.BacksolveAdjoint) for these")
        params = _check_adjoint_params(plan.func, self.params)
        ys = _Checkpointed.apply(plan, self.max_stored_steps, plan.ts, plan.packing.pack(y0), *params)
        return plan.solution(ys)

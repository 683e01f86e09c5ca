"""One loss, its parameter gradient by each gradient method of a solve, and how far apart they are.

The gradient study (:mod:`ndode.experiments.gradients`, docs/gradients.md) asks how
accurate the paper's backsolve adjoint is on the paper's own models. Its
question in code: a :class:`GradientProblem` (a trained model, a fixed batch,
its loss) differentiated by

* ``direct``: backpropagation through the solver's operations (RK-Net);
* ``checkpoint``: :class:`ndode.CheckpointAdjoint`, the exact gradient of the
  same discrete solve, by recomputing its steps in reverse;
* ``backsolve_seminorm`` / ``backsolve_full``: :class:`ndode.BacksolveAdjoint`,
  the paper's adjoint ODE solved backwards at the forward tolerance, its error
  estimate without (Kidger et al. 2021) or with the parameter adjoints.

All four run the same forward solve: the same accepted steps, hence the same
loss (:func:`compare` checks it). ``direct`` and ``checkpoint`` differentiate
that discrete computation exactly (they agree to rounding, checked too);
``backsolve`` integrates the continuous adjoint with steps of its own, so its
distance from ``checkpoint`` is the error of the backsolve gradient as a
gradient of the loss actually computed.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .adjoint import BacksolveAdjoint
from .checkpoint_adjoint import CheckpointAdjoint
from .memory import saved_tensor_bytes
from .ode.plan import Adjoint

__all__ = ["METHODS", "GradientProblem", "Measurement", "adjoint_for", "measure", "compare", "rel_err", "cosine"]

# the order of the table's rows; the first is the study's check, the second its reference
METHODS = ("direct", "checkpoint", "backsolve_seminorm", "backsolve_full")


def adjoint_for(method: str, options: dict | None = None) -> Adjoint | None:
    """The ``adjoint=`` argument of ``ndode.solve`` that computes ``method``'s gradient (None: direct backprop).

    ``options``: the forward solve's options. The backsolve adjoint's backward solve takes them (with its norm), as
    a training run's ``BacksolveAdjoint()`` inherits them: naming a norm in ``BacksolveAdjoint(options=...)``
    alone would drop them, and the backward solve would run with the library's default step-size controller
    instead of the experiment's own.
    """
    if method == "direct":
        return None
    if method == "checkpoint":
        return CheckpointAdjoint()
    if method in ("backsolve_seminorm", "backsolve_full"):
        return BacksolveAdjoint(options={**(options or {}), "norm": method.split("_", 1)[1]})
    raise ValueError(f"gradient method {method!r} is not one of {', '.join(METHODS)}")


@dataclass
class GradientProblem:
    """A loss whose solves take their tolerance and gradient method from the caller.

    ``loss(adjoint, rtol, atol)`` builds the loss on a fixed batch (the same
    random draws every call) with every solve made at ``rtol``/``atol`` and
    differentiated by ``adjoint`` (an ``ndode.Adjoint`` or None);
    ``nfe()`` returns (NFE-F, NFE-B) of the solves of the last call, after its
    ``backward()`` (NFE-B None for direct backprop). ``params``: the tensors
    differentiated; ``ode_params``: those inside the solved function (their
    gradient comes through the solve only). ``options``: the solves' own
    ``options`` (e.g. the experiments' step-size controller), which the
    backsolve adjoint's backward solve uses too (:func:`adjoint_for`).
    """

    loss: Callable[[Adjoint | None, float, float], torch.Tensor]
    nfe: Callable[[], tuple[int | None, int | None]]
    params: Sequence[torch.Tensor]
    ode_params: Sequence[torch.Tensor]
    options: dict | None = None


@dataclass
class Measurement:
    method: str
    loss: float
    grad: torch.Tensor  # every parameter's gradient, flattened, float64
    grad_ode: torch.Tensor  # the ode_params' part
    nfe_forward: int | None
    nfe_backward: int | None
    time_s: float  # forward + backward: the median of the timed repetitions (none: the first pass)
    saved_bytes: int  # what autograd keeps for backward after the forward pass (parameters left out)
    peak_bytes: int | None  # CUDA: peak allocated during forward + backward above the start; CPU: None
    error: str | None = None  # the method failed (e.g. its backward solve): why


def _flat(params) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).detach().reshape(-1).double().cpu()
                      for p in params]) if len(params) else torch.zeros(0, dtype=torch.float64)


def _zero(params) -> None:
    for p in params:
        p.grad = None


def measure(problem: GradientProblem, method: str, tol: float, repeats: int = 1) -> Measurement:
    """``method``'s gradient, NFE, saved bytes and time on ``problem`` at rtol = atol = ``tol``.

    The first pass counts the bytes saved for backward (``ndode.memory``) and keeps the gradient and NFE; then
    ``repeats`` more passes are timed without the counting hooks (their median is reported; with none, the first
    pass's time, hooks included). All in this process,
    so time and memory come from the same run. A method whose solve fails is returned with ``error`` set.
    """
    if repeats < 0:
        raise ValueError(f"repeats={repeats!r} must be >= 0")
    adjoint = adjoint_for(method, problem.options)
    params = list(problem.params)
    cuda = any(p.is_cuda for p in params)
    _zero(params)
    try:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        holder: list[torch.Tensor] = []
        t0 = time.perf_counter()
        saved = saved_tensor_bytes(lambda: holder.append(problem.loss(adjoint, tol, tol)) or holder[-1],
                                   ignore=params)
        loss = holder.pop()
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        first = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() - base if cuda else None
        value = float(loss.detach())
        del loss
        nfe_f, nfe_b = problem.nfe()
        grad, grad_ode = _flat(params), _flat(problem.ode_params)
        times = []
        for _ in range(repeats):
            _zero(params)
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            problem.loss(adjoint, tol, tol).backward()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - a solver failure is a result of the study, not a crash of it
        nan = torch.full((1,), math.nan, dtype=torch.float64)
        return Measurement(method, math.nan, nan, nan, None, None, math.nan, 0, None,
                           error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    finally:
        _zero(params)
    return Measurement(method, value, grad, grad_ode, nfe_f, nfe_b, statistics.median(times) if times else first,
                       saved, peak)


def rel_err(g: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖g − ref‖ / ‖ref‖`` (NaN for a zero reference or a failed method)."""
    if g.shape != ref.shape:
        return math.nan
    d = float(torch.linalg.vector_norm(ref))
    return float(torch.linalg.vector_norm(g - ref)) / d if d > 0 else math.nan


def cosine(g: torch.Tensor, ref: torch.Tensor) -> float:
    """The cosine of the angle between two gradients (NaN if either is zero or they differ in shape)."""
    if g.shape != ref.shape:
        return math.nan
    d = float(torch.linalg.vector_norm(g)) * float(torch.linalg.vector_norm(ref))
    return float(torch.dot(g, ref)) / d if d > 0 else math.nan


def compare(results: dict[str, Measurement], reference: str = "checkpoint", check: str = "direct",
            tight: Measurement | None = None) -> dict:
    """Flat metrics, ``<method>.<metric>``, of each measured method against ``reference``.

    Per method: ``loss``, ``nfe_forward``, ``nfe_backward``, ``time_s``, ``saved_bytes``, ``peak_bytes``,
    ``rel_err`` and ``cos`` (its gradient vs the reference's, all parameters), ``rel_err_ode`` (the solved
    function's parameters only), ``failed`` (1 when its solve failed), and with ``tight`` (the reference method
    at a tighter tolerance) ``rel_err_tight``: how far each gradient is from that one. Besides:
    ``same_forward`` (1 when every method's loss equals the reference's to 1e-6 relative: the same forward solve
    was differentiated) and ``check_rel_err`` (``check`` vs ``reference``, which must agree to rounding).
    """
    if reference not in results:
        raise ValueError(f"reference method {reference!r} was not measured (measured: {', '.join(results)})")
    ref = results[reference]
    out: dict = {}
    for name, m in results.items():
        out.update({
            f"{name}.loss": m.loss, f"{name}.nfe_forward": m.nfe_forward, f"{name}.nfe_backward": m.nfe_backward,
            f"{name}.time_s": m.time_s, f"{name}.saved_bytes": m.saved_bytes, f"{name}.peak_bytes": m.peak_bytes,
            f"{name}.rel_err": rel_err(m.grad, ref.grad), f"{name}.cos": cosine(m.grad, ref.grad),
            f"{name}.rel_err_ode": rel_err(m.grad_ode, ref.grad_ode), f"{name}.failed": int(m.error is not None),
        })
        if m.error is not None:
            out[f"{name}.error"] = m.error
        if tight is not None:
            out[f"{name}.rel_err_tight"] = rel_err(m.grad, tight.grad)
    ok = [m.loss for m in results.values() if m.error is None]
    out["same_forward"] = int(bool(ok) and all(abs(v - ref.loss) <= 1e-6 * max(abs(ref.loss), 1e-30) for v in ok))
    if check in results:
        out["check_rel_err"] = rel_err(results[check].grad, ref.grad)
    return out

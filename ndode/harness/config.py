"""Config schemas shared by every experiment, their validation, and run naming.

An experiment's schema is a dataclass that extends :class:`ExperimentConfig`
(adding its own ``model``, ``data`` and budget fields) and is stored in Hydra's
ConfigStore with :func:`register_schema`; its primary YAML lists that schema
first in its defaults list, so every YAML value and every command-line
override is merged into typed, closed nodes. A misspelt key
(``solver.rtoll=1e-3``), a wrong type (``solver.rtol=abc``) or an unknown
method (``solver.method=rk5``) then fails while Hydra composes the config,
before a run directory exists. :func:`validate` adds the checks types cannot
express (ranges, a fixed-step method without a step size) at the start of a run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from .. import ADJOINTS
from ..tableau import TABLEAUS
from ..wandb_mirror import WANDB_MODES

__all__ = [
    "ConfigError", "SolverMethod", "AdjointMethod", "SolverConfig", "BudgetConfig", "LoggerConfig", "ExperimentConfig",
    "Range", "ranged", "register_schema", "validate", "solver_kwargs", "run_name", "to_plain", "NAME_EXCLUDED_KEYS",
    "auto_budget", "requested_budget",
]


class ConfigError(ValueError):
    """A config value that composes but cannot be run (out of range, inconsistent)."""


@dataclass(frozen=True)
class Range:
    """The allowed interval of a numeric option: ``ge``/``gt`` below, ``le``/``lt`` above (None: unbounded).

    Attached to a schema field with :func:`ranged`; :func:`validate` checks it
    for every field that has one (each element of a list field; ``None`` of an
    ``Optional`` field passes). Floats must also be finite.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __str__(self) -> str:
        lo = f"[{self.ge:g}" if self.ge is not None else (f"({self.gt:g}" if self.gt is not None else None)
        hi = f"{self.le:g}]" if self.le is not None else (f"{self.lt:g})" if self.lt is not None else None)
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}"
        if hi:
            return f"<= {self.le:g}" if self.le is not None else f"< {self.lt:g}"
        return "finite"

    def contains(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if isinstance(v, float) and not math.isfinite(v):
            return False
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def check(self, path: str, value) -> None:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in values if v is not None and not self.contains(v)]
        if bad:
            what = ": every element must be" if isinstance(value, (list, tuple)) else " must be"
            finite = " and finite" if any(isinstance(v, float) and not math.isfinite(v) for v in bad) else ""
            raise ConfigError(f"{path}={_show(value)}{what} {self}{finite}")


def _show(v) -> str:
    return repr(list(v)) if isinstance(v, (list, tuple)) else repr(v)


def ranged(default: Any = MISSING, *, ge=None, gt=None, le=None, lt=None, default_factory=None):
    """A dataclass field whose value(s) :func:`validate` checks against ``Range(ge, gt, le, lt)``.

    ``hidden: int = ranged(50, ge=1)``, ``lr: float = ranged(1e-3, gt=0)``,
    ``p: float = ranged(0.5, ge=0, le=1)``, ``tols: List[float] = ranged(default_factory=..., gt=0)``.
    """
    meta = {"range": Range(ge=ge, gt=gt, le=le, lt=lt)}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def auto_budget() -> str:
    """What ``budget=auto`` means here: ``paper`` where CUDA is available, ``cpu`` otherwise."""
    import torch

    return "paper" if torch.cuda.is_available() else "cpu"


def _resolve_budget(choice: str) -> str:
    return auto_budget() if choice == "auto" else choice


def requested_budget(cfg) -> str:
    """The budget as asked for (``auto`` or a level), before ``auto`` was resolved."""
    try:
        raw = OmegaConf.to_container(cfg.budget, resolve=False).get("name")
    except (AttributeError, ValueError):
        return str(getattr(getattr(cfg, "budget", None), "name", None))
    return "auto" if isinstance(raw, str) and "ndode_budget:auto" in raw else str(cfg.budget.name)


# Member names equal the method names so `solver.method=rk4` parses, and the
# set is the solver core's own registry, so a new tableau is selectable at once.
SolverMethod = Enum("SolverMethod", {name: name for name in TABLEAUS}, module=__name__)
SolverMethod.__doc__ = "Runge–Kutta methods known to the solver core (ndode.METHODS)."
# How gradients of a solve are computed: none (backpropagation through the solver's steps), or an adjoint
# by its name in ndode.ADJOINTS (backsolve: the paper's adjoint ODE; checkpoint: exact, steps recomputed).
AdjointMethod = Enum("AdjointMethod", {name: name for name in ("none", *ADJOINTS)}, module=__name__)
AdjointMethod.__doc__ = "Gradient methods of a solve: none (direct backpropagation) or an ndode.ADJOINTS name."
AdjointMethod.__bool__ = lambda self: self.name != "none"  # `if cfg.solver.adjoint:` reads as before (a bool)

BUDGET_UNITS = ("iter", "epoch")
# Keys that do not change what a run computes: left out of run names and of
# the config comparison made when a run directory is reused.
NAME_EXCLUDED_KEYS = ("seed", "budget", "run_root", "device", "quiet", "threads", "nonfinite_skips", "logger",
                      "logger.wandb", "logger.mode", "logger.project", "logger.entity", "logger.verbose")


@dataclass
class SolverConfig:
    """How every ODE in the experiment is solved (``configs/solver/*.yaml``)."""

    method: SolverMethod = SolverMethod.dopri5
    rtol: float = ranged(1e-3, ge=0, le=1)
    atol: float = ranged(1e-4, ge=0)
    # Used by fixed-step methods, and by adaptive tableaus when adaptive=false.
    step_size: Optional[float] = ranged(None, gt=0)
    # None: the method's own nature (error control iff it has an embedded pair).
    adaptive: Optional[bool] = None
    adjoint: AdjointMethod = AdjointMethod.none  # none | backsolve | checkpoint
    max_num_steps: Optional[int] = ranged(None, ge=1)

    def validate(self, path: str) -> None:
        tab = TABLEAUS[_method_name(self.method)]
        adaptive = tab.adaptive if self.adaptive is None else self.adaptive
        if adaptive and not tab.adaptive:
            raise ConfigError(
                f"{path}.adaptive=true but {path}.method={tab.name!r} has no embedded error estimate; "
                f"adaptive methods: {', '.join(n for n, t in TABLEAUS.items() if t.adaptive)}")
        if adaptive and self.rtol == 0 and self.atol == 0:
            raise ConfigError(f"{path}.rtol and {path}.atol are both 0; adaptive {path}.method={tab.name!r} needs one > 0")
        if not adaptive:  # a fixed-step method without step_size steps on the output times (torchdiffeq)
            if self.step_size is None and tab.adaptive:
                raise ConfigError(
                    f"{path}.step_size is required for a fixed-step solve with {path}.method={tab.name!r} "
                    f"(e.g. {path}.step_size=0.05)")


@dataclass
class BudgetConfig:
    """How much work a run does (``configs/budget/<level>.yaml`` + ``configs/budget/<experiment>/<level>.yaml``).

    The harness counts training in *units*: one call of ``Task.train_step``,
    an iteration or an epoch depending on the experiment (``unit``).
    """

    name: str = MISSING  # smoke | cpu | paper (budget=auto: paper with CUDA, else cpu): which budget a table's numbers came from
    steps: int = ranged(MISSING, ge=1)  # training units in the whole run
    unit: str = "iter"  # iter | epoch: what one unit is, for the console and the tables
    log_every: int = ranged(1, ge=1)  # one metrics.jsonl/W&B record per this many units (interval means)
    eval_every: int = ranged(0, ge=0)  # evaluate every this many units; 0: only at the end
    checkpoint_every: int = ranged(0, ge=0)  # checkpoint every this many units; 0: only at the end
    progress_every: int = ranged(0, ge=0)  # console line every this many units; 0: at each evaluation

    def validate(self, path: str) -> None:
        if self.unit not in BUDGET_UNITS:
            raise ConfigError(f"{path}.unit={self.unit!r} is not one of {list(BUDGET_UNITS)}")


@dataclass
class LoggerConfig:
    """The W&B mirror of the run record (``configs/logger/*.yaml``)."""

    wandb: bool = True
    mode: Optional[str] = None  # online | offline | disabled; $WANDB_MODE wins when set; None: offline
    project: str = "ndode"
    entity: Optional[str] = None
    verbose: bool = False  # W&B's own console lines (run banner, history, sync hint); off: the run's own lines only

    def validate(self, path: str) -> None:
        if self.mode is not None and self.mode not in WANDB_MODES:
            raise ConfigError(f"{path}.mode={self.mode!r} is not one of {list(WANDB_MODES)} (or null: $WANDB_MODE)")


@dataclass
class ExperimentConfig:
    """Fields every experiment has; an experiment's schema subclasses this."""

    experiment: str = MISSING
    seed: int = ranged(0, ge=0)
    run_root: str = "results/runs"  # run records go to <run_root>/<experiment>/<run name>/
    device: str = "auto"  # auto (cuda where available, else cpu) | cpu | cuda | cuda:N | mps
    threads: Optional[int] = ranged(None, ge=1)  # torch intra-op threads; None: torch's default. Small models: 1 is fastest
    quiet: bool = False  # no console progress lines (tests)
    # training units whose metrics are not finite that may be skipped (model and optimizer restored to before
    # the unit) before the run stops; 0: stop at the first. Not part of the run name: rerunning a failed run
    # with nonfinite_skips=N resumes it from its last good checkpoint
    nonfinite_skips: int = ranged(0, ge=0)
    solver: SolverConfig = field(default_factory=SolverConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def validate(self, path: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.experiment or ""):
            raise ConfigError(f"experiment={self.experiment!r} must be a plain name ([A-Za-z0-9_.-]+)")
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?|mps", self.device):
            raise ConfigError(f"device={self.device!r} is not one of ['cpu', 'cuda', 'cuda:N', 'mps', 'auto']")


def register_schema(name: str, node: type) -> None:
    """Store an experiment schema so its primary YAML can list ``- <name>`` first in its defaults."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=name, node=node)


def validate(cfg: DictConfig | Any) -> Any:
    """Check a composed config; return it as the schema's dataclass instance.

    Types and key names are already enforced by the schema; this walks every
    dataclass node, checks each field declared with :func:`ranged` against its
    :class:`Range`, then calls the node's ``validate(path)`` (checks across
    fields), so an error names the option, its value and what is allowed.
    """
    if isinstance(cfg, DictConfig):
        _check_no_extra_keys(cfg, "")
    obj = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg

    def walk(node, path):
        if dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                if "range" in f.metadata:
                    f.metadata["range"].check(f"{path}.{f.name}" if path else f.name, getattr(node, f.name))
            if hasattr(node, "validate"):
                node.validate(path)
            for f in dataclasses.fields(node):
                walk(getattr(node, f.name), f"{path}.{f.name}" if path else f.name)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}")

    walk(obj, "")
    return obj


def _check_no_extra_keys(node: DictConfig, path: str) -> None:
    """Keys added with Hydra's ``+key=value`` bypass the schema's closed nodes; refuse them here."""
    typ = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(typ):
        allowed = {f.name for f in dataclasses.fields(typ)}
        extra = sorted(set(node.keys()) - allowed)
        if extra:
            where = path or "the top level"
            raise ConfigError(f"{', '.join(f'{path}.{k}' if path else k for k in extra)}: not an option of {where} "
                              f"({typ.__name__}); options: {sorted(allowed)}")
    for k in node.keys():
        if OmegaConf.is_missing(node, k):
            continue
        child = node[k]
        if isinstance(child, DictConfig):
            _check_no_extra_keys(child, f"{path}.{k}" if path else str(k))


def _method_name(method) -> str:
    return method.name if isinstance(method, Enum) else str(method)


def solver_kwargs(solver) -> dict:
    """Keyword arguments for ``ndode.solve`` from a ``SolverConfig`` (node or dataclass)."""
    name = _method_name(solver.method)
    adjoint = _method_name(solver.adjoint)
    tab = TABLEAUS[name]
    adaptive = tab.adaptive if solver.adaptive is None else bool(solver.adaptive)
    options: dict = {}
    if not adaptive:
        options["step_size"] = None if solver.step_size is None else float(solver.step_size)
    else:
        # Every recorded experiment ran with the integral controller (SciPy RK45's), the library default until the
        # PI controller won on DETEST (docs/solver.md); the experiments keep it, so a rerun reproduces the records.
        options["controller"] = "integral"
        if solver.max_num_steps is not None:
            options["max_num_steps"] = int(solver.max_num_steps)
    return dict(method=name, rtol=float(solver.rtol), atol=float(solver.atol), options=options or None,
                adjoint=None if adjoint == "none" else ADJOINTS[adjoint]())


def to_plain(cfg) -> dict:
    """A resolved, JSON/YAML-safe dict of a config (enums as their names)."""
    if dataclasses.is_dataclass(cfg):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True, throw_on_missing=True)


_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
MAX_NAME = 120


def run_name(override_dirname: str, budget: str, seed) -> str:
    """The run directory name: ``budget=<b>,<sorted overrides>,seed=<n>``.

    ``override_dirname`` is Hydra's ``hydra.job.override_dirname`` (task
    overrides, sorted, without ``NAME_EXCLUDED_KEYS``). The budget and seed
    are always spelled out, so ``budget=cpu`` typed or taken by default land
    in the same directory. Characters unsafe in a path become ``_``; a name
    longer than 120 characters is cut and ends with a hash of the whole.
    """
    parts = [f"budget={budget}"] + ([override_dirname] if override_dirname else []) + [f"seed={seed}"]
    name = _UNSAFE.sub("_", ",".join(parts))
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME - 11]}-{digest}"
    return name


def checked_run_root(run_root: str) -> str:
    """``run_root`` itself, once it is known that run directories can be made under it (resolver ``ndode_run_root``).

    Hydra makes the run directory before any of our code runs, so a ``run_root`` that is a file, read-only or
    under /proc would end in a traceback from its ``mkdir`` that does not name the option. configs/harness.yaml
    resolves Hydra's output directories through this check instead: a bad one prints an ``error:`` line naming
    ``run_root`` and exits 2 (a SystemExit, which Hydra lets through, where it reports an Exception with a
    traceback). Nothing is created: the check makes and removes a temporary directory in the nearest existing
    ancestor.
    """
    import os
    import sys
    import tempfile
    from pathlib import Path

    path = Path(run_root).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file, not a directory")
        os.rmdir(tempfile.mkdtemp(prefix=".ndode-probe-", dir=existing))
    except OSError as e:
        why = f"{e.strerror} ({existing})" if e.strerror else str(e)
        print(f"error: run_root={run_root}: run directories cannot be made there: {why}. Pass a writable directory, "
              "e.g. run_root=results/runs", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return run_root


if not OmegaConf.has_resolver("ndode_run_root"):
    OmegaConf.register_new_resolver("ndode_run_root", checked_run_root)
if not OmegaConf.has_resolver("ndode_run_name"):
    OmegaConf.register_new_resolver("ndode_run_name", run_name)
# `budget: auto` in a primary config's defaults list: `budget/<experiment>@budget: ${ndode_budget:${budget}}`
# picks the experiment's numbers for the resolved level, and configs/budget/auto.yaml names it the same way.
if not OmegaConf.has_resolver("ndode_budget"):
    OmegaConf.register_new_resolver("ndode_budget", _resolve_budget)

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

from ..adjoint import BacksolveAdjoint
from ..tableau import TABLEAUS

__all__ = [
    "ConfigError", "SolverMethod", "SolverConfig", "BudgetConfig", "LoggerConfig", "ExperimentConfig",
    "register_schema", "validate", "solver_kwargs", "run_name", "to_plain", "NAME_EXCLUDED_KEYS",
]


class ConfigError(ValueError):
    """A config value that composes but cannot be run (out of range, inconsistent)."""


# Member names equal the method names so `solver.method=rk4` parses, and the
# set is the solver core's own registry, so a new tableau is selectable at once.
SolverMethod = Enum("SolverMethod", {name: name for name in TABLEAUS}, module=__name__)
SolverMethod.__doc__ = "Runge–Kutta methods known to the solver core (ndode.METHODS)."

WANDB_MODES = ("online", "offline", "disabled")
BUDGET_UNITS = ("iter", "epoch")
# Keys that do not change what a run computes: left out of run names and of
# the config comparison made when a run directory is reused.
NAME_EXCLUDED_KEYS = ("seed", "budget", "run_root", "quiet", "threads", "logger", "logger.wandb", "logger.mode",
                      "logger.project", "logger.entity")


@dataclass
class SolverConfig:
    """How every ODE in the experiment is solved (``configs/solver/*.yaml``)."""

    method: SolverMethod = SolverMethod.dopri5
    rtol: float = 1e-3
    atol: float = 1e-4
    # Used by fixed-step methods, and by adaptive tableaus when adaptive=false.
    step_size: Optional[float] = None
    # None: the method's own nature (error control iff it has an embedded pair).
    adaptive: Optional[bool] = None
    adjoint: bool = False
    max_num_steps: Optional[int] = None

    def validate(self, path: str) -> None:
        tab = TABLEAUS[_method_name(self.method)]
        for key in ("rtol", "atol"):
            v = getattr(self, key)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{path}.{key}={v!r} must be a finite number >= 0")
        adaptive = tab.adaptive if self.adaptive is None else self.adaptive
        if adaptive and not tab.adaptive:
            raise ConfigError(
                f"{path}.adaptive=true but {path}.method={tab.name!r} has no embedded error estimate; "
                f"adaptive methods: {', '.join(n for n, t in TABLEAUS.items() if t.adaptive)}")
        if adaptive and self.rtol == 0 and self.atol == 0:
            raise ConfigError(f"{path}.rtol and {path}.atol are both 0; adaptive {path}.method={tab.name!r} needs one > 0")
        if not adaptive:
            if self.step_size is None:
                raise ConfigError(
                    f"{path}.step_size is required for a fixed-step solve with {path}.method={tab.name!r} "
                    f"(e.g. {path}.step_size=0.05)")
            if not (math.isfinite(self.step_size) and self.step_size > 0):
                raise ConfigError(f"{path}.step_size={self.step_size!r} must be a finite number > 0")
        if self.max_num_steps is not None and self.max_num_steps < 1:
            raise ConfigError(f"{path}.max_num_steps={self.max_num_steps!r} must be >= 1 (or null)")


@dataclass
class BudgetConfig:
    """How much work a run does (``configs/budget/<level>.yaml`` + ``configs/budget/<experiment>/<level>.yaml``).

    The harness counts training in *units*: one call of ``Task.train_step``,
    an iteration or an epoch depending on the experiment (``unit``).
    """

    name: str = MISSING  # smoke | cpu | paper: which budget a table's numbers came from
    steps: int = MISSING  # training units in the whole run
    unit: str = "iter"  # iter | epoch: what one unit is, for the console and the tables
    log_every: int = 1  # one metrics.jsonl/W&B record per this many units (interval means)
    eval_every: int = 0  # evaluate every this many units; 0: only at the end
    checkpoint_every: int = 0  # checkpoint every this many units; 0: only at the end
    progress_every: int = 0  # console line every this many units; 0: at each evaluation

    def validate(self, path: str) -> None:
        if self.steps < 1:
            raise ConfigError(f"{path}.steps={self.steps!r} must be >= 1")
        if self.unit not in BUDGET_UNITS:
            raise ConfigError(f"{path}.unit={self.unit!r} is not one of {list(BUDGET_UNITS)}")
        if self.log_every < 1:
            raise ConfigError(f"{path}.log_every={self.log_every!r} must be >= 1")
        for key in ("eval_every", "checkpoint_every", "progress_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{path}.{key}={getattr(self, key)!r} must be >= 0 (0: only at the end)")


@dataclass
class LoggerConfig:
    """The W&B mirror of the run record (``configs/logger/*.yaml``)."""

    wandb: bool = True
    mode: Optional[str] = None  # online | offline | disabled; $WANDB_MODE wins when set; None: offline
    project: str = "ndode"
    entity: Optional[str] = None

    def validate(self, path: str) -> None:
        if self.mode is not None and self.mode not in WANDB_MODES:
            raise ConfigError(f"{path}.mode={self.mode!r} is not one of {list(WANDB_MODES)} (or null: $WANDB_MODE)")


@dataclass
class ExperimentConfig:
    """Fields every experiment has; an experiment's schema subclasses this."""

    experiment: str = MISSING
    seed: int = 0
    run_root: str = "results/runs"  # run records go to <run_root>/<experiment>/<run name>/
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    threads: Optional[int] = None  # torch intra-op threads; None: torch's default. Small models: 1 is fastest
    quiet: bool = False  # no console progress lines (tests)
    solver: SolverConfig = field(default_factory=SolverConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def validate(self, path: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.experiment or ""):
            raise ConfigError(f"experiment={self.experiment!r} must be a plain name ([A-Za-z0-9_.-]+)")
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads={self.threads!r} must be >= 1 (or null: torch's default)")
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?|mps", self.device):
            raise ConfigError(f"device={self.device!r} is not one of ['cpu', 'cuda', 'cuda:N', 'mps', 'auto']")


def register_schema(name: str, node: type) -> None:
    """Store an experiment schema so its primary YAML can list ``- <name>`` first in its defaults."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=name, node=node)


def validate(cfg: DictConfig | Any) -> Any:
    """Check a composed config; return it as the schema's dataclass instance.

    Types and key names are already enforced by the schema; this walks every
    dataclass node and calls its ``validate(path)``, so an error names the
    option, its value and what is allowed.
    """
    if isinstance(cfg, DictConfig):
        _check_no_extra_keys(cfg, "")
    obj = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg

    def walk(node, path):
        if dataclasses.is_dataclass(node):
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
    tab = TABLEAUS[name]
    adaptive = tab.adaptive if solver.adaptive is None else bool(solver.adaptive)
    options: dict = {}
    if not adaptive:
        options["step_size"] = float(solver.step_size)
    elif solver.max_num_steps is not None:
        options["max_num_steps"] = int(solver.max_num_steps)
    return dict(method=name, rtol=float(solver.rtol), atol=float(solver.atol), options=options or None,
                adjoint=BacksolveAdjoint() if solver.adjoint else None)


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


if not OmegaConf.has_resolver("ndode_run_name"):
    OmegaConf.register_new_resolver("ndode_run_name", run_name)

"""The W&B mirror of a run record: same config, metrics and summary, never the only copy.

Used by the run harness (one mirror per training run) and by the report (each experiment's
``summary`` run, :mod:`ndode.report.dashboard`); it imports nothing else of ``ndode``.

Mode: ``$WANDB_MODE`` when set, else ``logger.mode``, else ``offline`` (files
under ``<run dir>/wandb/``, uploaded later by ``make sync``). ``online``
without an API key falls back to ``offline``. Any W&B failure (import, init,
network, a bad value) warns once and turns the mirror off; the run and its
record go on.

At the end of a run the mirror also logs its media (:meth:`WandbMirror.media`):
``figures/*.png`` as images ``figures/<stem>`` and ``arrays/*.csv`` / ``*.npz``
as tables ``arrays/<stem>`` (one per array of an ``.npz``: ``arrays/<stem>/<name>``).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
from pathlib import Path

from .wandb_auth import have_api_key

__all__ = ["WandbMirror", "WANDB_MODES", "resolve_mode", "have_api_key", "array_tables", "MAX_TABLE_ROWS"]

log = logging.getLogger("ndode.wandb")
WANDB_MODES = ("online", "offline", "disabled")


def resolve_mode(configured: str | None) -> str:
    """``$WANDB_MODE`` (tests set ``disabled``) > ``logger.mode`` > ``offline``."""
    env = os.environ.get("WANDB_MODE")
    mode = env or configured or "offline"
    mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode not in WANDB_MODES:
        _warn(f"W&B mode {mode!r} (from {'$WANDB_MODE' if env else 'logger.mode'}) is not one of "
              f"{list(WANDB_MODES)}; mirroring offline")
        mode = "offline"
    return mode


def _warn(msg: str) -> None:
    log.warning(msg)


def _dir_id(run_dir: Path) -> str:
    """A stable W&B id for a run directory: a resumed run continues the same W&B run."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


MAX_TABLE_ROWS = 10_000  # W&B's limit for a table logged in a run; longer arrays are logged every k-th row


def _number(text: str):
    try:
        x = float(text)
    except ValueError:
        return text if text != "" else None
    return int(x) if x.is_integer() and "." not in text and "e" not in text.lower() else x


def _thin(rows: list, what: str) -> list:
    if len(rows) <= MAX_TABLE_ROWS:
        return rows
    k = math.ceil(len(rows) / MAX_TABLE_ROWS)
    _warn(f"{what}: {len(rows)} rows; W&B gets every {k}th (the run record keeps them all)")
    return rows[::k]


def array_tables(path: Path) -> dict[str, tuple[list[str], list[list]]]:
    """The W&B tables of one array file, as ``{key: (columns, rows)}``.

    ``<stem>.csv``: one table ``arrays/<stem>`` (numbers parsed, the header as columns).
    ``<stem>.npz``: one table per array, ``arrays/<stem>/<name>``: a vector is one column, a
    matrix one column per column, a higher-dimensional array one row per index of its leading
    axes (columns ``i0, i1, ...``) and one column per entry of its last axis. Scalars are skipped.
    """
    path = Path(path)
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                return {}
            rows = [[_number(c) for c in row] for row in reader]
        return {f"arrays/{path.stem}": (header, _thin(rows, str(path)))}
    if path.suffix != ".npz":
        return {}
    import numpy as np

    out = {}
    with np.load(path) as z:
        for name in z.files:
            a = z[name]
            if a.ndim == 0 or a.size == 0:
                continue
            if a.dtype == bool:
                a = a.astype(np.int8)
            if a.ndim == 1:
                cols, rows = [name], a[:, None].tolist()
            elif a.ndim == 2:
                cols, rows = [f"{name}[{j}]" for j in range(a.shape[1])], a.tolist()
            else:
                lead = a.shape[:-1]
                idx = np.stack(np.unravel_index(np.arange(math.prod(lead)), lead), axis=1)
                cols = [f"i{k}" for k in range(len(lead))] + [f"{name}[{j}]" for j in range(a.shape[-1])]
                rows = [list(map(int, i)) + v for i, v in zip(idx, a.reshape(-1, a.shape[-1]).tolist())]
            out[f"arrays/{path.stem}/{name}"] = (cols, _thin(rows, f"{path}:{name}"))
    return out


class WandbMirror:
    """Mirror of one run. Every method is a no-op once disabled or after the first failure.

    ``run_id`` (default: from ``run_dir``) and ``job_type`` (default: ``group``) are for the
    experiments' ``summary`` runs, one per (experiment, budget), rewritten by each ``make tables``.
    """

    @classmethod
    def of_run(cls, cfg, config: dict, run_dir: Path, name: str, goals: dict[str, str], enabled: bool) -> WandbMirror:
        """The mirror of a training run: ``cfg`` its config (``logger.*``, experiment, budget), ``config`` the
        resolved config as recorded; ``enabled``: this process writes the record (rank 0)."""
        model_name = config["model"].get("name") if isinstance(config.get("model"), dict) else None
        return cls(enabled=bool(cfg.logger.wandb) and enabled, mode=cfg.logger.mode, project=cfg.logger.project,
                   entity=cfg.logger.entity, run_dir=run_dir, name=name, group=cfg.experiment,
                   tags=[f"budget={cfg.budget.name}"] + ([f"model={model_name}"] if model_name else []),
                   config={**config, "run_dir": str(run_dir)}, goals=goals, quiet=cfg.quiet or not cfg.logger.verbose)

    def __init__(self, *, enabled: bool, mode: str | None, project: str, entity: str | None, run_dir: Path,
                 name: str, group: str, tags: list[str], config: dict, goals: dict[str, str] | None = None,
                 quiet: bool = True, run_id: str | None = None, job_type: str | None = None):
        self.run = None
        self.mode = resolve_mode(mode) if enabled else "disabled"
        if self.mode == "disabled":
            return
        try:
            import wandb
        except Exception as e:  # noqa: BLE001 - a broken install must not fail the run
            self._fail("import wandb", e)
            return
        if self.mode == "online" and not have_api_key():
            _warn("W&B mode is online but no API key is configured (WANDB_API_KEY or `wandb login`); "
                  "mirroring offline instead, upload later with `make sync`")
            self.mode = "offline"
        try:
            # silent: none of W&B's own console lines (banner, run history, sync hint: most of a sweep's output);
            # console="off": it does not capture ours. Its failures still reach us as exceptions (_fail warns)
            settings = wandb.Settings(silent=quiet, console="off", init_timeout=90)
            self.run = wandb.init(
                project=project, entity=entity, group=group, name=name, id=run_id or _dir_id(run_dir), tags=tags,
                config=config, dir=str(run_dir), mode=self.mode, job_type=job_type or group,
                resume="allow" if self.mode == "online" else None, settings=settings)
            self.run.define_metric("step")
            self.run.define_metric("*", step_metric="step")
            for key, goal in (goals or {}).items():
                self.run.define_metric(f"eval/{key}", summary=goal, step_metric="step")
        except Exception as e:  # noqa: BLE001
            self._fail("wandb.init", e)

    def _fail(self, what: str, err: BaseException) -> None:
        _warn(f"W&B mirror off after an error in {what}: {type(err).__name__}: {err}. "
              "The run and its record on disk are unaffected.")
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=1, quiet=True)
            except Exception:  # noqa: BLE001
                pass

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, step: int, kind: str, metrics: dict) -> None:
        if self.run is None:
            return
        try:
            data = {f"{kind}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
            data["step"] = step
            self.run.log(data)
        except Exception as e:  # noqa: BLE001
            self._fail("wandb.log", e)

    def summary(self, summary: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(summary)
        except Exception as e:  # noqa: BLE001
            self._fail("wandb summary", e)

    def media(self, run_dir: Path, step: int) -> None:
        """Log the run's figures as images and its arrays as tables (see :func:`array_tables`), at ``step``."""
        if self.run is None:
            return
        try:
            import wandb

            run_dir = Path(run_dir)
            data = {f"figures/{p.stem}": wandb.Image(str(p), caption=p.name)
                    for p in sorted((run_dir / "figures").glob("*.png"))}
            for p in sorted((run_dir / "arrays").glob("*")):
                try:
                    data.update({key: wandb.Table(columns=cols, data=rows)
                                 for key, (cols, rows) in array_tables(p).items()})
                except Exception as e:  # noqa: BLE001 - one unreadable array file: the others still go
                    _warn(f"W&B: {p} not logged as a table: {type(e).__name__}: {e}")
            if data:
                self.run.log({**data, "step": step})
        except Exception as e:  # noqa: BLE001
            self._fail("wandb media", e)

    def publish(self, tables: dict[str, tuple[list[str], list[list]]], images: dict[str, Path]) -> None:
        """Put tables (``{key: (columns, rows)}``) and images (``{key: png path}``) in the run's summary.

        Summary values replace earlier ones under the same key, so a ``summary`` run rewritten
        with the same id holds the latest tables, not a history of them.
        """
        if self.run is None:
            return
        try:
            import wandb

            for key, (cols, rows) in tables.items():
                self.run.summary[key] = wandb.Table(columns=cols, data=rows)
            for key, path in images.items():
                self.run.summary[key] = wandb.Image(str(path), caption=Path(path).name)
        except Exception as e:  # noqa: BLE001
            self._fail("wandb publish", e)

    def finish(self, exit_code: int = 0) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        try:
            run.finish(exit_code=exit_code)
        except Exception as e:  # noqa: BLE001
            _warn(f"W&B finish failed: {type(e).__name__}: {e}. The run record on disk is complete.")

"""The W&B mirror of a run record: same config, metrics and summary, never the only copy.

Mode: ``$WANDB_MODE`` when set, else ``logger.mode``, else ``offline`` (files
under ``<run dir>/wandb/``, uploaded later by ``make sync``). ``online``
without an API key falls back to ``offline``. Any W&B failure (import, init,
network, a bad value) warns once and turns the mirror off; the run and its
record go on.
"""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from .config import WANDB_MODES

__all__ = ["WandbMirror", "resolve_mode", "have_api_key"]

log = logging.getLogger("ndode.harness")


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


def have_api_key() -> bool:
    """Whether an online W&B run could authenticate without asking (env var or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _warn(msg: str) -> None:
    log.warning(msg)


def run_id(run_dir: Path) -> str:
    """A stable W&B id for a run directory: a resumed run continues the same W&B run."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


class WandbMirror:
    """Mirror of one run. Every method is a no-op once disabled or after the first failure."""

    def __init__(self, *, enabled: bool, mode: str | None, project: str, entity: str | None, run_dir: Path,
                 name: str, group: str, tags: list[str], config: dict, goals: dict[str, str] | None = None,
                 quiet: bool = False):
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
            settings = wandb.Settings(silent=quiet, console="off", init_timeout=90)
            self.run = wandb.init(
                project=project, entity=entity, group=group, name=name, id=run_id(run_dir), tags=tags,
                config=config, dir=str(run_dir), mode=self.mode, job_type=group,
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

    def finish(self, exit_code: int = 0) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        try:
            run.finish(exit_code=exit_code)
        except Exception as e:  # noqa: BLE001
            _warn(f"W&B finish failed: {type(e).__name__}: {e}. The run record on disk is complete.")

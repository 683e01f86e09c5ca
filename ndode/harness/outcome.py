"""How an attempt at a run ends: its status in meta.json, and on the command line a message and an exit status."""

from __future__ import annotations

import logging
import signal
import sys

from ..io import WriteError, now_iso
from .config import ConfigError
from .console import first_line
from .record import RunError, RunLockedError, RunRecord
from .signals import RunInterrupted, StopNow

__all__ = ["USER_ERRORS", "record_failure", "record_interrupt", "stopped_error", "exit_on_command_line"]

log = logging.getLogger("ndode.harness")
USER_ERRORS = (RunError, ConfigError, WriteError)  # on the command line: a message and an exit status, no traceback


def record_failure(record: RunRecord | None, e: BaseException, phase: str, step: int) -> None:
    """Record a failed (or, for a stop signal outside the unit loop, an exit or a second Ctrl-C, interrupted)
    attempt in meta.json; ``phase`` and ``step``: where the run was.

    Best effort: the failure may be a full disk.
    """
    if record is None or not record.writer:
        return
    if isinstance(e, StopNow):
        name = signal.Signals(e.signum).name
        status, reason = "interrupted", f"{name} during {phase}"
        details = {"interrupted": {"signal": name, "phase": phase, "step": step, "at": now_iso()}}
    else:
        reason = str(e) if isinstance(e, (RunError, WriteError)) else first_line(e)
        status = "interrupted" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "failed"
        details = {"failed_at_step": step, "ended": now_iso()}
    try:
        record.set_status(status, reason=reason, **details)
    except Exception as write_error:  # noqa: BLE001 - the original error is what the user must see
        log.debug("could not record the failure in meta.json: %s", write_error)


def record_interrupt(record: RunRecord, signum: int, budget, step: int) -> RunInterrupted:
    """Record in meta.json that ``signum`` stopped the run after unit ``step`` (checkpointed); return the error
    the run ends with."""
    b, name = budget, signal.Signals(signum).name
    record.set_status("interrupted", reason=f"{name} at {b.unit} {step}/{b.steps}",
                      interrupted={"signal": name, "step": step, "at": now_iso()})
    return RunInterrupted(f"{name} at {b.unit} {step}/{b.steps} of {record.dir}: checkpoint written; "
                          "run the same command again to resume", signum)


def stopped_error(signum: int, phase: str, record: RunRecord | None) -> RunInterrupted:
    """The error a stop signal outside the unit loop ends the run with (:func:`record_failure` recorded it)."""
    where = f" of {record.dir}" if record is not None else ""
    return RunInterrupted(f"{signal.Signals(signum).name} during {phase}{where}: stopped before it finished; "
                          "run the same command again to resume", signum)


def exit_on_command_line(e: BaseException, multirun: bool) -> dict:
    """What a run error (one of :data:`USER_ERRORS`) does under ``@hydra.main``: a message and a non-zero exit
    (128 + the signal number after a stop signal); a run locked by another process in a sweep is skipped ({})."""
    if isinstance(e, RunLockedError):
        if multirun:  # a resubmitted sweep: the other jobs still run
            log.warning("skip: %s", e)
            return {}
        raise SystemExit(f"error: {e}") from None
    if isinstance(e, RunInterrupted):
        print(f"interrupted: {e}", file=sys.stderr, flush=True)
        raise SystemExit(128 + e.signum) from None
    raise SystemExit(f"{'config error' if isinstance(e, ConfigError) else 'error'}: {e}") from None

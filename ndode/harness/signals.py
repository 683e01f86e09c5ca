"""Stop signals for a whole run: SIGTERM, SIGINT and SIGUSR2 checkpoint and stop, never kill mid-write.

In the unit loop a signal is noted and the loop finishes the unit, checkpoints
and stops (:class:`RunInterrupted`); in any other phase there is no unit to
finish, so it stops at once (:class:`StopNow`, recorded as ``interrupted``);
while the final records are written it waits. A second Ctrl-C stops at once.

SIGUSR2 is what SLURM sends ahead of a time limit or preemption with
``--signal=USR2@<s>`` (submitit's default): the handler that was there before
(submitit's requeue) is called after the checkpoint (:meth:`StopSignals.hand_over`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Callable

from .record import RunError

__all__ = ["STOP_SIGNALS", "StopSignals", "StopNow", "RunInterrupted"]

log = logging.getLogger("ndode.harness")
# checkpoint and stop on these (SIGUSR2: SLURM's warning before a time limit or preemption, as submitit asks for it)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
NOW, AFTER_UNIT, DEFER = "now", "after unit", "defer"  # what a signal does (StopSignals.mode)


class RunInterrupted(RunError):
    """SIGTERM or SIGINT: the run checkpointed and stopped; the same command resumes it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopNow(BaseException):
    """A stop signal outside the unit loop (setup, resume, analyze, finish): nothing to finish, so stop at once.

    A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on its way (a checkpoint that
    fails to load, the W&B mirror) takes it for an error of its own.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """The stop signals' handlers for one run (a context manager: installed on entry, the previous ones back
    on exit). ``received`` is the last signal that came; ``where()`` names the unit a signal will finish."""

    def __init__(self, where: Callable[[], str]):
        self.where = where
        self.received: int | None = None
        self.mode = NOW
        self.previous: dict = {}  # the handlers installed before the run

    def __enter__(self) -> StopSignals:
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in STOP_SIGNALS:
                self.previous[sig] = signal.signal(sig, self.on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    @contextlib.contextmanager
    def handled(self, mode: str):
        """Within the block a signal does ``mode`` (:data:`AFTER_UNIT` in the unit loop, :data:`DEFER` while
        the final records are written); :data:`NOW` again after it."""
        self.mode = mode
        try:
            yield
        finally:
            self.mode = NOW

    def on_signal(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (the previous checkpoint is kept)
        self.received = signum
        if self.mode == DEFER:
            return
        if self.mode == NOW:  # no unit to finish: the last checkpoint (if any) is what a rerun resumes from
            raise StopNow(signum)
        log.warning("%s: finishing %s, then checkpointing and stopping (Ctrl-C again stops at once)",
                    signal.Signals(signum).name, self.where())

    def check(self) -> None:
        """Between phases: a signal that came since stops the run here."""
        if self.received is not None:
            raise StopNow(self.received)

    def hand_over(self, signum: int) -> None:
        """Call the handler installed before the run for this signal (a launcher's requeue), if any."""
        previous = self.previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            log.info("%s: handing over to the handler installed before the run (%s)", signal.Signals(signum).name,
                     getattr(previous, "__qualname__", previous))
            previous(signum, None)

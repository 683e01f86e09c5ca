"""What a run says on the console: its start or resume, progress lines with an ETA, the analysis, the end.

Rank 0 speaks for a data-parallel run (the other ranks' harness logger shows
warnings only); ``quiet=true`` moves the progress and analysis lines to DEBUG.
"""

from __future__ import annotations

import logging
import time

__all__ = ["Console", "fmt", "fmt_time", "first_line", "nfe_text", "PROGRESS_SECONDS"]

log = logging.getLogger("ndode.harness")
PROGRESS_SECONDS = 30.0  # a console line at least this often, whatever the budget's progress_every


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def nfe_text(*sources: dict) -> str:
    """The NFE figures of the first source that reports any (``nfe_forward 26, nfe_backward 40``)."""
    for src in sources:
        nfe = {k: v for k, v in (src or {}).items() if "nfe" in k and v is not None}
        if nfe:
            return ", ".join(f"{k} {fmt(v)}" for k, v in nfe.items())
    return "not reported by this task"


class Console:
    """The console lines of one run (``cfg``: its config: experiment, device, quiet; ``world``: its number of
    processes; ``speaks``: this process is rank 0; ``supports_ddp``: the task can run under torchrun)."""

    def __init__(self, cfg, world: int, speaks: bool, supports_ddp: bool):
        self.cfg, self.world, self.speaks, self.supports_ddp = cfg, world, speaks, supports_ddp
        self.last_line = (time.perf_counter(), 0)  # (time, unit) of the last progress line: the ETA's pace
        if not speaks:
            log.setLevel(logging.WARNING)  # rank 0 speaks for the run

    @property
    def level(self) -> int:
        return logging.DEBUG if self.cfg.quiet else logging.INFO

    def started(self, run_dir, budget, budget_requested: str, device, step: int, loaded=None,
                dropped: int = 0) -> None:
        """The first line of an attempt: a start, or a resume from ``loaded`` (a checkpoint) at ``step``."""
        where = f"{device} (auto)" if self.cfg.device == "auto" else str(device)
        processes = self.processes()
        budget_text = f"budget {budget.name}"
        if budget_requested == "auto":
            budget_text += f" (auto: {'CUDA available' if budget.name == 'paper' else 'no CUDA'})"
        if loaded is not None:
            log.info("resume: %s from %s at %s %d/%d (dropped %d later metric records) | %s, device %s, %s",
                     run_dir, loaded.name, budget.unit, step, budget.steps, dropped, budget_text, where, processes)
        else:
            log.info("start: %s | %s, %d %ss, device %s, %s", run_dir, budget_text, budget.steps, budget.unit,
                     where, processes)

    def pace_from(self, t: float, step: int) -> None:
        """The ETA of the next progress line counts from unit ``step`` at time ``t`` (``time.perf_counter``)."""
        self.last_line = (t, step)

    def processes(self) -> str:
        if self.world > 1:
            import torch.distributed

            return f"{self.world} processes (DDP, {torch.distributed.get_backend()})"
        if self.supports_ddp:
            return "1 process"
        return "1 process (this experiment runs single-process; it does not support torchrun)"

    def progress_due(self, step: int, every: int, last: bool) -> bool:
        """A progress line at ``step``: on the cadence, at the last unit, or when the last one is old."""
        return step % every == 0 or last or time.perf_counter() - self.last_line[0] > PROGRESS_SECONDS

    def progress(self, name: str, budget, step: int, state) -> None:
        """A progress line at unit ``step`` (``state``: the loop's :class:`~.metrics.LoopState`)."""
        if not self.speaks:
            return
        now = time.perf_counter()
        # ETA from the pace since the last line: units can change cost (e.g. a final refinement phase)
        rate = (step - self.last_line[1]) / max(now - self.last_line[0], 1e-9)
        self.last_line = (now, step)
        eta = (budget.steps - step) / rate if rate > 0 else float("nan")
        train = " ".join(f"{k} {fmt(v)}" for k, v in state.last_train.items())
        ev = " ".join(f"{k} {fmt(v)}" for k, v in state.last_eval.items())
        line = (f"{self.cfg.experiment} {name} | {budget.unit} {step}/{budget.steps} ({100 * step / budget.steps:.0f}%)"
                f" | {train}" + (f" | eval@{state.last_eval_step} {ev}" if ev else "")
                + f" | {fmt_time(state.elapsed())} elapsed, ETA {fmt_time(eta) if eta == eta else '?'}")
        log.log(self.level, line)

    def analyzing(self, name: str) -> None:
        log.log(self.level, "analyze: %s %s", self.cfg.experiment, name)

    def analyzed(self, seconds: float) -> None:
        log.log(self.level, "analyze: done in %s", fmt_time(seconds))

    def done(self, run_dir, summary: dict) -> None:
        log.info("done: %s | %s | %s", run_dir,
                 " ".join(f"{k} {fmt(v)}" for k, v in summary.items() if isinstance(v, (int, float))),
                 fmt_time(summary["wall_time_s"]))

"""The run record: one directory per run, the source of truth for every table and figure.

::

    <run_root>/<experiment>/<run name>/
        config.yaml     the resolved config (budget and seed included)
        meta.json       git commit and dirty flag, package versions, host, command, attempts
        metrics.jsonl   one JSON object per logged record: {"step", "kind", "time_s", <metrics>...}
        checkpoint.pt   the latest training state (resume)
        checkpoint.prev.pt  the one before it (resume falls back on it when the latest cannot be read)
        .lock           the running process's lock (``fcntl.flock``; names its host and PID)
        summary.json    the final metrics
        done            written last: the run is complete

Every file is written atomically (:mod:`ndode.io`: a temporary file in the
same directory, then ``os.replace``), so a run killed at any instant leaves
either the old or the new version of each file, never half of one; a failed
write (a full disk) raises :class:`RecordWriteError` naming the file and
leaves its previous version in place. ``metrics.jsonl`` is appended line by line; a resumed run
first drops the records after its checkpoint and any torn last line (a corrupt
line before the end is reported, :func:`ndode.io.scan_jsonl`). A corrupt config.yaml,
meta.json or summary.json raises :class:`RunRecordError` naming the file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterable

import yaml

from ..io import (
    WriteError,
    atomic_save,
    atomic_write_text,
    dumps,
    git_state,
    now_iso,
    read_jsonl,
    scan_lines,
    write_error,
)

# atomic_save, atomic_write_text, read_jsonl, git_state and now_iso are ndode.io's, named here for the harness's users
__all__ = ["RunRecord", "RunError", "RunRecordError", "RunLockedError", "RecordWriteError", "package_versions",
           "atomic_save", "atomic_write_text", "read_jsonl", "git_state", "now_iso"]

CONFIG, META, METRICS, SUMMARY, CHECKPOINT, PREV_CHECKPOINT, DONE, LOCK = (
    "config.yaml", "meta.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "checkpoint.prev.pt", "done", ".lock")
PACKAGES = ("ndode", "torch", "numpy", "hydra-core", "omegaconf", "wandb", "pandas", "matplotlib")


class RunError(RuntimeError):
    """A run that stops for a reason the user can act on; the message says what happened and what to do.

    On the command line the harness prints the message (no traceback) and exits non-zero.
    """


class RunRecordError(RunError):
    """A run directory that cannot be used as asked (e.g. it holds a run with another config)."""


class RunLockedError(RunRecordError):
    """Another process holds the run directory's lock."""


RecordWriteError = WriteError
"""A file of the run record could not be written (disk full, permissions...); its previous version is kept
(:class:`ndode.io.WriteError`, an ``OSError``; the harness reports it as it does a :class:`RunError`)."""


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


class RunRecord:
    """Reads and writes one run directory. Only the main process (rank 0) writes."""

    def __init__(self, run_dir: str | os.PathLike, writer: bool = True):
        self.dir = Path(run_dir).resolve()
        self.writer = writer
        self._metrics_fh = None
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ paths and state
    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def done(self) -> bool:
        return self.path(DONE).exists()

    @property
    def checkpoint_path(self) -> Path:
        return self.path(CHECKPOINT)

    @property
    def checkpoints(self) -> list[Path]:
        """The checkpoints on disk, newest first: ``checkpoint.pt``, then the one before it."""
        return [p for p in (self.path(CHECKPOINT), self.path(PREV_CHECKPOINT)) if p.exists()]

    def write_checkpoint(self, save) -> None:
        """``save(tmp_path)`` writes the new checkpoint; the one it replaces becomes ``checkpoint.prev.pt``."""
        if self.writer:
            atomic_save(self.path(CHECKPOINT), save, keep_previous=self.path(PREV_CHECKPOINT))

    # ------------------------------------------------------------------ one process per run directory
    def lock(self) -> None:
        """Take the run directory's lock for this process (released when it exits, however it exits).

        Raises :class:`RunLockedError` naming the holder's host and PID when
        another process has it. Only the writer (rank 0) locks.
        """
        if not self.writer or self._lock_fd is not None:
            return
        path = self.path(LOCK)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "holder not yet recorded"
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLockedError(
                f"{self.dir} is already being run by another process ({holder}); only one process may run it "
                "at a time. Wait for that one to finish (this command then skips the finished run) or stop it "
                "(it checkpoints on SIGTERM; run this command again to resume)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {platform.node()} pid {os.getpid()} since {now_iso()}\n".encode(), 0)
        self._lock_fd = fd

    @property
    def locked(self) -> bool:
        """This process holds the run directory's lock."""
        return self._lock_fd is not None

    def unlock(self) -> None:
        fd = self._lock_fd
        if fd is not None:
            self._lock_fd = None
            os.close(fd)  # releases the flock

    def _read(self, name: str, parse):
        """``parse(text)`` of a record file (None when absent); a corrupt one raises :class:`RunRecordError` naming it."""
        p = self.path(name)
        if not p.exists():
            return None
        try:
            obj = parse(p.read_text(encoding="utf-8"))
            if not isinstance(obj, dict):
                raise ValueError(f"holds a {type(obj).__name__}, not a mapping")
        except (OSError, ValueError, yaml.YAMLError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            why = " ".join(str(e).split())[:200]
            raise RunRecordError(
                f"{p} cannot be read ({type(e).__name__}: {why}); nothing in {self.dir} was changed. Restore the "
                f"file, or start this run over: delete its directory (rm -r '{self.dir}') and run the same command "
                "again") from None
        return obj

    def read_config(self) -> dict | None:
        return self._read(CONFIG, yaml.safe_load)

    def read_meta(self) -> dict:
        return self._read(META, json.loads) or {}

    def read_summary(self) -> dict | None:
        return self._read(SUMMARY, json.loads)

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.path(METRICS))

    # ------------------------------------------------------------------ writing
    def write_json(self, name: str, obj) -> None:
        if self.writer:
            atomic_write_text(self.path(name), dumps(obj, indent=2, sort_keys=False) + "\n")

    def write_config(self, config: dict) -> None:
        if self.writer:
            atomic_write_text(self.path(CONFIG), yaml.safe_dump(config, sort_keys=False))

    def write_meta(self, meta: dict) -> None:
        self.write_json(META, meta)

    def write_summary(self, summary: dict) -> None:
        self.write_json(SUMMARY, summary)

    def mark_done(self) -> None:
        """meta.json's end time and ``done`` status, then the ``done`` marker (written last: the run is complete)."""
        if not self.writer:
            return
        meta = self.read_meta()
        meta["finished"] = now_iso()
        meta["status"], meta["reason"] = "done", None
        meta["attempts"][-1].update(finished=meta["finished"], status="done")
        self.write_meta(meta)
        atomic_write_text(self.path(DONE), now_iso() + "\n")

    def truncate_metrics(self, last_step: int) -> int:
        """Keep only complete records with ``step <= last_step``, less ``analysis`` records (written after the last
        checkpoint: a resumed run redoes its analysis); return how many lines were dropped."""
        if not self.writer:
            return 0
        p = self.path(METRICS)
        if not p.exists():
            return 0
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
        keep = [line for _, line, rec in scan_lines(lines)[0]
                if rec.get("step", 0) <= last_step and rec.get("kind") != "analysis"]
        atomic_write_text(p, "".join(f"{line}\n" for line in keep))
        return len(lines) - len(keep)

    def append_metrics(self, record: dict) -> None:
        if not self.writer:
            return
        try:
            if self._metrics_fh is None:
                self._metrics_fh = open(self.path(METRICS), "a", encoding="utf-8")
            # one write per complete line: a kill leaves at most a torn last line, dropped on resume
            self._metrics_fh.write(dumps(record) + "\n")
            self._metrics_fh.flush()
        except OSError as e:
            raise write_error(self.path(METRICS), e) from e

    def close(self) -> None:
        if self._metrics_fh is not None:
            fh, self._metrics_fh = self._metrics_fh, None
            try:
                fh.close()
            except OSError:  # a flush that failed already raised RecordWriteError
                pass

    def set_status(self, status: str, reason: str | None = None, **attempt) -> None:
        """Record the run's state in meta.json (``status``, ``reason``) and details in the current attempt."""
        if not self.writer:
            return
        meta = self.read_meta()
        if not meta:
            return
        meta["status"], meta["reason"] = status, reason
        if meta.get("attempts"):
            meta["attempts"][-1].update(status=status, reason=reason, **attempt)
        self.write_meta(meta)

    def start_meta(self, extra: dict | None = None, resumed_from: int | None = None,
                   attempt_extra: dict | None = None) -> dict:
        """Create or update meta.json for a new attempt at this run."""
        meta = self.read_meta()
        git = git_state()
        attempt = {"started": now_iso(), "resumed_from_step": resumed_from, "argv": list(sys.argv),
                   "host": platform.node(), "pid": os.getpid(), "git": git, **(attempt_extra or {})}
        if not meta:
            meta = {
                "git": git,
                "packages": package_versions(),
                "host": {"name": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
                         "python": sys.executable},
                "started": attempt["started"],
                "finished": None,
                "attempts": [],
            }
        meta.update(extra or {})
        meta.update(status="running", reason=None)
        meta["attempts"].append(attempt)
        self.write_meta(meta)
        return meta

"""A run directory held by one process: made, locked and checked to hold this run, or left as it was found.

Rank 0 claims (``RunRecord.lock``: a ``flock`` naming its host and PID); a
directory that holds another run's config or meta.json, or a corrupt one, is
refused before anything in it is written; a run refused before its first
record leaves no directory behind (:meth:`RunDirectory.abandon`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from ..io import flatten, scan_jsonl
from .config import NAME_EXCLUDED_KEYS
from .hydra_job import HydraJob
from .record import CONFIG, META, METRICS, RunRecord, RunRecordError

__all__ = ["RunDirectory", "run_identity", "fingerprint", "differs"]

log = logging.getLogger("ndode.harness")


def run_identity(config: dict) -> dict:
    """The config keys that decide what a run computes, seed and budget included (for comparing a reused run
    directory)."""
    flat = flatten(config)
    return {k: v for k, v in flat.items() if not any(k == x or k.startswith(x + ".") for x in NAME_EXCLUDED_KEYS
                                                      if x not in ("seed", "budget"))}


def fingerprint(identity: dict) -> str:
    """A short hash of a run's identity, kept in meta.json to tell its run from another."""
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differs(a: dict, b: dict) -> str:
    """The keys in which two identities differ, with both values (the first five)."""
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    shown = ", ".join(f"{k}: {a.get(k, '<absent>')!r} there, {b.get(k, '<absent>')!r} here" for k in keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


class RunDirectory:
    """This process's hold on the directory of ``record``, the run with ``identity``; ``job``: the Hydra job
    (its log file goes into the directory once it is claimed), or None."""

    def __init__(self, record: RunRecord, identity: dict, job: HydraJob | None):
        self.record, self.identity, self.job = record, identity, job
        self.fresh = False  # the directory held no earlier attempt when this process claimed it
        self.created: list[Path] = []  # directories this process made for the run
        self.log_file: logging.Handler | None = None
        self.metrics_steps: list[int] = []  # the steps of the records in metrics.jsonl when the run was claimed
        self.corrupt_lines: list[int] = []  # lines of metrics.jsonl that are not a record (before the last)

    def claim(self) -> bool:
        """Lock and claim the run directory and check that its config.yaml and meta.json are this run's and
        readable, and read its metrics; False: already finished.

        Nothing is written here: the run writes once the checkpoints have been checked too, so a refused
        run leaves the directory as it found it.
        """
        record = self.record
        if record.done:
            log.info("skip: %s is finished (found its 'done' marker); delete the directory to run it again", record.dir)
            return False
        self.lock()
        if record.done:  # finished by the process that held the lock a moment ago
            log.info("skip: %s is finished (found its 'done' marker); delete the directory to run it again", record.dir)
            return False
        todo = (f"this run's directory is {record.dir}: delete it (rm -r '{record.dir}') to start this run there, "
                "or change the overrides/seed")
        old = record.read_config()  # a corrupt one: RunRecordError naming it
        if old is not None and run_identity(old) != self.identity:
            raise RunRecordError(f"{record.path(CONFIG)} is another run's config (differs in "
                                 f"{differs(run_identity(old), self.identity)}); {todo}")
        theirs = record.read_meta().get("fingerprint")  # absent in records made before it existed: config.yaml decides
        if theirs is not None and theirs != fingerprint(self.identity):
            raise RunRecordError(f"{record.path(META)} is another run's record (config fingerprint {theirs}, this "
                                 f"run's {fingerprint(self.identity)}: another config or seed); {todo}")
        records, bad = scan_jsonl(record.path(METRICS))
        if bad:  # a torn last line is normal after a kill; a bad line before the end is not
            log.warning("resume: %s: line%s %s %s not a JSON record (left out of the record; noted in meta.json)",
                        record.path(METRICS), "s" if len(bad) > 1 else "", ", ".join(map(str, bad)),
                        "are" if len(bad) > 1 else "is")
            self.corrupt_lines = bad
        self.metrics_steps = [int(r.get("step") or 0) for _, _, r in records]
        return True

    def lock(self) -> None:
        """Make the run directory and take its lock; note whether it holds an earlier attempt."""
        record = self.record
        missing = [p for p in (record.dir, *record.dir.parents) if not p.exists()]
        record.dir.mkdir(parents=True, exist_ok=True)
        self.created = missing
        record.lock()  # RunLockedError names the holder; nothing of its directory is touched
        self.fresh = record.writer and not any(
            record.path(n).exists() for n in ("meta.json", "metrics.jsonl", "checkpoint.pt", "checkpoint.prev.pt"))
        if self.job is not None and record.writer:  # the job's log file, opened only now that this process holds
            # the run (configs/harness.yaml turns Hydra's own off: it would append to a running run's log before the lock)
            self.log_file = logging.FileHandler(record.path(f"{self.job.name}.log"), delay=True)
            self.log_file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
            logging.getLogger().addHandler(self.log_file)

    def begin(self, config: dict, start: int | None, attempt: dict, experiment: str, budget: dict,
              device: dict) -> int:
        """The first writes of this attempt, once every file of the directory has been read and checked:
        config.yaml, metrics.jsonl cut back to unit ``start`` (the checkpoint resumed from; None: there is none,
        and the records of an attempt killed before its first checkpoint go), a new attempt (``attempt``: its
        details) in meta.json. Returns how many metric records were dropped."""
        record = self.record
        record.write_config(config)
        dropped = record.truncate_metrics(start or 0)
        record.start_meta(extra={"experiment": experiment, "run_name": record.dir.name,
                                 "overrides": None if self.job is None else self.job.overrides,
                                 "fingerprint": fingerprint(self.identity), "budget": budget, "device": device},
                          resumed_from=start, attempt_extra=attempt)
        return dropped

    def abandon(self) -> bool:
        """A run refused before its first record: remove its directory (if this attempt was its first); True if so."""
        record = self.record
        if not self.fresh or not record.locked:
            return False
        record.close()
        record.unlock()
        shutil.rmtree(record.dir, ignore_errors=True)
        for d in self.created[1:]:  # the parents this process made, if nothing else went into them
            try:
                d.rmdir()
            except OSError:
                break
        log.debug("removed %s: the run stopped before its first record", record.dir)
        return True

    def close_log(self) -> None:
        """Stop writing the job's log file (the next job of a sweep in this process logs to its own directory)."""
        if self.log_file is not None:
            logging.getLogger().removeHandler(self.log_file)
            self.log_file.close()
            self.log_file = None

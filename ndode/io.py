"""Files on disk: atomic writes, strict JSON, JSON-lines records, the git state of the checkout.

The bottom of the non-solver layers: ``ndode.data``, ``ndode.harness`` and
``ndode.report`` write through it, and it imports nothing else of ``ndode``
(``tests/test_imports.py``).

Every file is written atomically (a temporary file in the same directory,
flushed to disk, then ``os.replace``), so a process killed at any instant
leaves either the old or the new version of a file, never half of one; a
failed write (a full disk) raises :class:`WriteError` naming the file and
leaves its previous version in place.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["WriteError", "write_error", "atomic_write_bytes", "atomic_write_text", "atomic_save", "dumps",
           "flatten", "scan_jsonl", "scan_lines", "read_jsonl", "now_iso", "git_state"]


class WriteError(OSError):
    """A file could not be written (disk full, permissions...); its previous version is kept.

    The run harness treats it as a run error: on the command line its message is
    printed without a traceback (``ndode.harness.RecordWriteError`` is this class).
    """


def write_error(path: str | os.PathLike, e: BaseException) -> WriteError:
    """The :class:`WriteError` for a failed write of ``path`` (``e``: what the OS or the writer raised)."""
    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    hint = ""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "; free some space, then run the same command again to resume"
    return WriteError(f"could not write {path}: {why} ({type(e).__name__}); its previous version is kept{hint}")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _tmp_path(path: Path) -> Path:
    # keep the suffix: some writers (matplotlib, torch) infer a format from it
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file, flush it to disk, rename it over ``path``.

    Any failure (ENOSPC at the write or at the fsync...) leaves ``path`` as it
    was and raises :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(path: str | os.PathLike, save, keep_previous: str | os.PathLike | None = None) -> None:
    """Atomically write a file produced by ``save(tmp_path)`` (``torch.save``, ``savefig``, ``np.savez``...).

    With ``keep_previous``, the file being replaced is first renamed to that
    path (at every instant one of the two names holds a complete file). A
    failed save raises :class:`WriteError` naming ``path``; the old file stays.
    """
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        save(tmp)
        _fsync(tmp)
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        raise write_error(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)


def _json_default(x):
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _clean(x):
    """NaN and infinities become None (strict JSON); everything else unchanged."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def dumps(obj, **kw) -> str:
    """Strict JSON: NaN and infinities as null, numpy/torch scalars as numbers, paths as text."""
    return json.dumps(_clean(obj), default=_json_default, allow_nan=False, **kw)


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts as one level with dotted keys; lists and empty dicts as JSON text (hashable, so
    tables can group by them and configs compare as values)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, dict)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def scan_jsonl(path: str | os.PathLike) -> tuple[list[tuple[int, str, dict]], list[int]]:
    """The records of a JSON-lines file as ``(line number, line, record)`` and the numbers of the lines that
    are not a JSON object, except a torn last line (what a kill mid-append leaves: normal, skipped unreported)."""
    p = Path(path)
    return scan_lines(p.read_text(encoding="utf-8", errors="replace").splitlines() if p.exists() else [])


def scan_lines(lines: list[str]) -> tuple[list[tuple[int, str, dict]], list[int]]:
    """:func:`scan_jsonl` of lines already read."""
    good, bad = [], []
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError:
            if n < len(lines):
                bad.append(n)
            continue
        good.append((n, line, rec))
    return good, bad


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete records of a JSON-lines file (a torn last line and corrupt lines are skipped)."""
    return [rec for _, _, rec in scan_jsonl(path)[0]]


def git_state(where: str | os.PathLike | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the repository holding ``where`` (default: the ndode package)."""
    where = Path(where) if where else Path(__file__).resolve().parents[1]
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=20,
                                  check=True).stdout.strip()
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}

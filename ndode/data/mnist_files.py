"""Where MNIST's raw files live and what they are called: shared by the loader (``ndode.data.mnist``) and the
provisioning tool (``ndode.data._provision``), so neither imports the other's module."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["RAW_FILES", "MNISTPrepareError", "raw_dir", "raw_files_present"]

# (split, kind) -> file name, exactly as torchvision.datasets.MNIST expects them
RAW_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


class MNISTPrepareError(RuntimeError):
    """MNIST could not be prepared or failed verification; the message says why and what to do."""


def raw_dir(root: str | os.PathLike = "data") -> Path:
    """The folder torchvision reads the raw IDX files from: ``<root>/MNIST/raw``."""
    return Path(root) / "MNIST" / "raw"


def raw_files_present(root: str | os.PathLike = "data") -> bool:
    """Whether all four raw IDX files exist (not whether they are valid)."""
    d = raw_dir(root)
    return all((d / name).is_file() for name in RAW_FILES.values())

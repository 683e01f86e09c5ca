"""Promises about the repository itself: the core stays light, committed results hold no machine paths."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_ndode_does_not_reach_the_harness_or_pandas():
    code = ("import sys, ndode; ndode.odeint; ndode.odeint_adjoint; "
            "bad = sorted(m for m in sys.modules if m == 'pandas' or m.startswith(('ndode.harness', 'hydra', 'wandb'))); "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "", f"`import ndode` imported {out.stdout.strip()}"


# An absolute POSIX path of some machine: /work/..., /tmp/..., /home/..., /root/..., /Users/...
_ABSOLUTE = re.compile(r"(?<![\w.:/])/(?:work|tmp|home|root|Users|mnt|scratch)/[\w.-]")


def test_committed_results_hold_no_absolute_paths():
    files = subprocess.run(["git", "ls-files", "results", "docs", "README.md"], capture_output=True, text=True,
                           check=True, cwd=REPO).stdout.split()
    assert files, "git ls-files found nothing: not a checkout?"
    hits = []
    for name in files:
        path = REPO / name
        if path.suffix in {".png", ".jpg", ".pdf", ".npz", ".pt"} or not path.is_file():
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if _ABSOLUTE.search(line):
                hits.append(f"{name}:{i}: {line.strip()[:120]}")
    assert not hits, "absolute machine paths in committed files (use repository-relative paths):\n" + "\n".join(hits)

#!/usr/bin/env python
"""Upload the offline W&B mirrors of run records (`make sync`).

Finds <runs>/**/wandb/offline-run-* that W&B has not marked synced and runs
`wandb sync` on them. Needs an API key (WANDB_API_KEY or `wandb login`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path


def pending(runs: Path) -> list[Path]:
    out = []
    for d in sorted(runs.glob("**/wandb/offline-run-*")):
        if d.is_dir() and not any(d.glob("*.wandb.synced")):
            out.append(d)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="results/runs", help="root of the run records (default: %(default)s)")
    ap.add_argument("--dry-run", action="store_true", help="list what would be uploaded")
    args = ap.parse_args(argv)
    dirs = pending(Path(args.runs))
    if not dirs:
        print(f"nothing to sync under {args.runs}")
        return 0
    print(f"{len(dirs)} offline W&B run(s) to upload")
    if args.dry_run:
        print("\n".join(str(d) for d in dirs))
        return 0
    exe = shutil.which("wandb", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        print("the wandb command is not installed (pip install wandb)", file=sys.stderr)
        return 2
    # one call per directory: a failure names its run, and the others still go up
    failed = [d for d in dirs if subprocess.run([exe, "sync", "--mark-synced", str(d)]).returncode != 0]
    if failed:
        print(f"{len(failed)} failed (no API key? run `wandb login`):\n" + "\n".join(map(str, failed)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Build the W&B report of the paper's tables and figures from the runs (`make dashboard`).

One section per paper table and figure of every experiment in ndode/report/registry.py, each with
its panels and a runs table filtered to the experiment and the budget; an experiment with no runs
gets a section saying so. The tables and figures come from the experiments' `summary` runs, which
`make tables` writes; upload the offline runs first with `make sync`.

    python scripts/wandb_dashboard.py --dry-run              # the outline, offline
    python scripts/wandb_dashboard.py --budget cpu --entity me --project ndode
    python scripts/wandb_dashboard.py --workspace            # also save a workspace view

Entity and project: the options, else configs/logger/wandb.yaml (entity null: your default one).
Publishing needs an API key (WANDB_API_KEY or `wandb login`) and the network; without either it
stops before building anything, so no partial report is left behind.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

import yaml

REPO = Path(__file__).resolve().parents[1]
CONNECT_TIMEOUT_S = 5.0


def logger_defaults(path: Path = REPO / "configs" / "logger" / "wandb.yaml") -> tuple[str | None, str]:
    """(entity, project) of the logger config the runs are mirrored with."""
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}
    return (cfg or {}).get("entity"), (cfg or {}).get("project") or "ndode"


def _have_api_key() -> bool:
    """ndode/wandb_auth.py's check, loaded by path: importing the ndode package costs an
    `import torch` (seconds on a busy machine), and without a key this script must stop at once."""
    spec = importlib.util.spec_from_file_location("_ndode_wandb_auth", REPO / "ndode" / "wandb_auth.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.have_api_key()


def _reachable(url: str) -> str | None:
    """None if a TCP connection to the W&B API opens within CONNECT_TIMEOUT_S, else the reason."""
    u = urlparse(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
        return None
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def main(argv=None) -> int:
    import os

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="cpu", help="the budget whose runs the report shows (default: %(default)s)")
    ap.add_argument("--entity", help="W&B entity (default: logger config, else your default entity)")
    ap.add_argument("--project", help="W&B project (default: logger config's project)")
    ap.add_argument("--experiment", action="append", help="only these experiments (repeatable)")
    ap.add_argument("--runs", default="results/runs", help="run records (default: %(default)s)")
    ap.add_argument("--results", default="results", help="results root; its summary/*.csv stand in for "
                    "experiments without run records (default: %(default)s)")
    ap.add_argument("--dry-run", action="store_true", help="print the report's outline; no network, no key")
    ap.add_argument("--workspace", action="store_true", help="also save a workspace view with the same sections")
    args = ap.parse_args(argv)

    entity, project = logger_defaults()
    entity, project = args.entity or entity, args.project or project
    if not args.dry_run:  # fail fast, before collecting anything
        if not _have_api_key():
            print("wandb_dashboard: no W&B API key: set WANDB_API_KEY or run `wandb login` (an account at "
                  "wandb.ai), then `make sync && make dashboard`. Nothing was published. "
                  "`make dashboard DASHBOARD_ARGS=--dry-run` prints the report's outline offline.", file=sys.stderr)
            return 2
        base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        why = _reachable(base)
        if why:
            print(f"wandb_dashboard: cannot reach {base} ({why}); nothing was published.", file=sys.stderr)
            return 2

    from ndode.harness import load_runs
    from ndode.report.dashboard import build_report, build_workspace, collect_runs, format_outline, outline
    from ndode.report.registry import REGISTRY

    runs = load_runs(args.runs) if Path(args.runs).is_dir() else None
    try:
        plan = outline(REGISTRY, collect_runs(runs, args.results), args.budget, args.experiment)
    except KeyError as e:
        print(f"wandb_dashboard: {e.args[0]}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(format_outline(plan, entity, project), end="")
        return 0
    try:
        import wandb
        import wandb_workspaces  # noqa: F401
    except ImportError as e:
        print(f"wandb_dashboard: {e}; install it with `pip install -e '.[dashboard]'` (make dashboard does)",
              file=sys.stderr)
        return 2
    try:
        entity = entity or wandb.Api().default_entity
        # Report.save resolves every runset's project before its one upsert: a failure saves nothing
        report = build_report(plan, entity, project)
        report.save()
        print(f"report: {report.url}")
        if args.workspace:
            view = build_workspace(plan, entity, project)
            view.save()
            print(f"workspace: {view.url}")
    except Exception as e:  # noqa: BLE001 - an invalid key, a missing project, the service: say which, no traceback
        print(f"wandb_dashboard: publishing to {entity or '<default entity>'}/{project} failed: "
              f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

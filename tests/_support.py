"""Helpers the tests share (plain functions; the shared fixtures are in conftest.py): configs composed as Hydra
would, the demo's smoke run, a complete run record's check, and a script of ``scripts/`` as a module.

Experiments are imported as the modules they are (``from ndode.experiments import mnist``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def compose_config(name: str, *overrides: str, hydra: bool = False):
    """``configs/<name>.yaml`` with the overrides, composed by Hydra's compose API (``hydra``: with its ``hydra``
    node, the run directory and launcher, as a job of the command line gets it)."""
    from hydra import compose, initialize_config_dir

    register_schema_of(name)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra)


def register_schema_of(name: str) -> None:
    """Import the experiment behind ``configs/<name>.yaml`` (its module registers the typed schema the config's
    defaults name), so a test composes it whichever test modules ran before."""
    if importlib.util.find_spec(f"ndode.experiments.{name}") is not None:
        importlib.import_module(f"ndode.experiments.{name}")


def compose_demo(*overrides: str):
    return compose_config("ode_demo", *overrides)


def compose_mnist(*overrides: str):
    return compose_config("mnist", *overrides)


def smoke(tmp_path: Path, *overrides: str):
    """A smoke-budget config of the demo and the run directory Hydra would give it."""
    from ndode.harness.config import NAME_EXCLUDED_KEYS, run_name

    cfg = compose_demo("budget=smoke", "quiet=true", f"run_root={tmp_path}", *overrides)
    named = [o for o in overrides if o.split("=")[0] not in NAME_EXCLUDED_KEYS]
    run_dir = tmp_path / "ode_demo" / run_name(",".join(sorted(named)), cfg.budget.name, cfg.seed)
    return cfg, run_dir


def assert_complete(run_dir: Path) -> dict:
    """Every file of a finished run record is there, none half-written; its meta.json."""
    for name in ("config.yaml", "meta.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "done"):
        assert (run_dir / name).is_file(), name
    meta = json.loads((run_dir / "meta.json").read_text())
    assert {"git", "packages", "host", "started", "finished", "attempts"} <= set(meta)
    assert meta["packages"]["torch"] and meta["finished"]
    assert not list(run_dir.glob(".*tmp*")), "temporary files left behind"
    return meta


def load_script(name: str):
    """``scripts/<name>.py`` as a module (its ``main(argv)`` runs in this process: no interpreter start-up). The
    scripts are command-line tools, not a package: they are loaded from their files."""
    spec = importlib.util.spec_from_file_location(f"_ndode_script_{name}", REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

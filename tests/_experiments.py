"""What the experiment tests share: an entry point or a script loaded as a module, and a config composed as Hydra
would."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_experiment(name: str):
    """``experiments/<name>.py`` as a module (once per test session; its schema registers itself)."""
    mod_name = f"_ndode_experiment_{name}"
    if mod_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(mod_name, REPO / "experiments" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[mod_name]


def load_script(name: str):
    """``scripts/<name>.py`` as a module (its ``main(argv)`` runs in this process: no interpreter start-up)."""
    spec = importlib.util.spec_from_file_location(f"_ndode_script_{name}", REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compose_config(name: str, *overrides: str):
    """``configs/<name>.yaml`` with the overrides, composed by Hydra's compose API."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(name, overrides=list(overrides))

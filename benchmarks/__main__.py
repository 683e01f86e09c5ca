"""Run the peer benchmarks: ``python -m benchmarks [--quick] [--out results/bench] [--only overhead,...]``.

Prints one summary line per benchmark (with the ndode/peer ratios). With
``--out`` it also writes ``<name>.csv`` and ``<name>.png`` per benchmark and a
``README.md`` with the machine, the goals and a table per benchmark. ``make
bench`` is the full run (``--out results/bench``); ``make bench-quick`` the
reduced one (prints only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import (
    adjoint_memory,
    adjoint_nfe,
    batch_coupling,
    checkpoint_adjoint,
    cnf_step,
    ddp_scaling,
    detest,
    latent_ode_step,
    odenet_step,
    overhead,
    poisson_step,
    report,
    work_precision,
)
from . import peers as P
from .timing import machine_info

MODULES = {m.NAME: m for m in (overhead, work_precision, odenet_step, adjoint_memory, batch_coupling, adjoint_nfe,
                                cnf_step, checkpoint_adjoint, latent_ode_step, poisson_step, ddp_scaling, detest)}
PROFILES = ("full", "quick", "tiny")


def run_all(profile: str = "full", out: Path | None = None, only=None, command: str = "", log=print) -> dict:
    """Run the benchmarks at ``profile`` size; returns ``{name: DataFrame}`` (and writes files under ``out``)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    missing = [p for p in P.PEERS if p != "ndode" and not P.available(p)]
    if missing:
        log(f"peers not installed (skipped): {', '.join(missing)}; `make bench` installs them")
    names = list(MODULES) if not only else list(only)
    unknown = sorted(set(names) - set(MODULES))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {', '.join(MODULES)}")
    info = machine_info()
    log(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['torch_threads']} thread, "
        f"load {info['loadavg_1m']}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results, seconds, plots = {}, {}, {}
    t_start = time.perf_counter()
    for name in names:
        mod = MODULES[name]
        t0 = time.perf_counter()
        df = mod.run(mod.SIZES[profile])
        seconds[name] = time.perf_counter() - t0
        results[name] = df
        log(f"[{seconds[name]:5.1f} s] {mod.summary(df)}")
        if out is not None:
            df.to_csv(out / f"{name}.csv", index=False)
            if hasattr(mod, "plot"):
                mod.plot(df, out / f"{name}.png")
                plots[name] = f"{name}.png"
    elapsed = time.perf_counter() - t_start
    info_after = machine_info()
    log(f"total {elapsed:.0f} s; load before {info['loadavg_1m']}, after {info_after['loadavg_1m']}")
    if out is not None:
        (out / "machine.json").write_text(json.dumps(
            {"before": info, "after": info_after, "elapsed_s": round(elapsed, 1), "profile": profile,
             "command": command or f"python -m benchmarks --out {out}",
             "seconds": {k: round(v, 1) for k, v in seconds.items()}}, indent=2) + "\n")
        (out / "README.md").write_text(report.build_readme(
            results, MODULES, info, info_after, elapsed, command or f"python -m benchmarks --out {out}",
            seconds, plots))
    return results


def rebuild_report(out: Path) -> None:
    """Rewrite ``out/README.md`` from the CSV files and ``machine.json`` of an earlier run (no measuring)."""
    import pandas as pd

    meta = json.loads((out / "machine.json").read_text())
    results = {n: pd.read_csv(out / f"{n}.csv") for n in MODULES if (out / f"{n}.csv").exists()}
    plots = {n: f"{n}.png" for n in results if (out / f"{n}.png").exists()}
    (out / "README.md").write_text(report.build_readme(
        results, MODULES, meta["before"], meta["after"], meta["elapsed_s"], meta.get("command", "make bench"),
        meta["seconds"], plots))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="profile", const="quick",
                      help="reduced sizes (under a minute); prints the summary lines")
    size.add_argument("--tiny", action="store_const", dest="profile", const="tiny",
                      help="smallest sizes (the smoke test's); numbers are meaningless")
    ap.add_argument("--out", type=Path, default=None, help="write CSV, PNG and README.md here")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(MODULES)}")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild OUT/README.md from the CSV files of an earlier run, measuring nothing")
    args = ap.parse_args(argv)
    if args.report_only:
        if args.out is None:
            ap.error("--report-only needs --out")
        rebuild_report(args.out)
        return 0
    profile = args.profile or "full"
    only = args.only.split(",") if args.only else None
    command = "make bench" if profile == "full" and args.out == Path("results/bench") else \
        "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    run_all(profile, args.out, only, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())

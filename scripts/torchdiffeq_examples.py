"""Run torchdiffeq's own examples, unchanged, on ndode and on torchdiffeq, on short schedules, and print both.

    python scripts/torchdiffeq_examples.py PATH/TO/torchdiffeq [--only ode_demo,cnf] [--ndode-root .]

``PATH/TO/torchdiffeq`` is a checkout of github.com/rtqichen/torchdiffeq (only
its ``examples/`` folder is read; nothing of it is copied into this
repository). Each example runs twice in its own process from a temporary copy,
seeded alike (``torch``, ``numpy``, ``random`` at 0): once through the shim
package named ``torchdiffeq`` that ``scripts/torchdiffeq_suite.py`` writes
(ndode's ``odeint``, ``odeint_adjoint``, ``odeint_event``), once with the
installed torchdiffeq. The script prints each run's exit status and the last
lines it printed (the losses; bouncing_ball's gradient check), side by side.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torchdiffeq_suite import SHIM  # noqa: E402

# example -> arguments of the short schedule; each also runs with its adjoint flag
EXAMPLES = {
    "ode_demo": (["--niters", "40", "--test_freq", "20"], ["--adjoint"]),
    "latent_ode": (["--niters", "20"], ["--adjoint", "True"]),
    "cnf": (["--niters", "10", "--num_samples", "128", "--results_dir", "results"], ["--adjoint"]),
    "bouncing_ball": (["2"], ["--adjoint"]),
    "learn_physics": (["--num_iterations", "21", "--save", "figs"], None),  # no adjoint flag
}
SEEDED = ("import random, runpy, sys, numpy, torch\n"
          "random.seed(0); numpy.random.seed(0); torch.manual_seed(0)\n"
          "sys.argv = sys.argv[1:]\n"
          "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def run_one(workdir: Path, name: str, args: list[str], shim: Path | None, ndode_root: Path, timeout: int):
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(p for p in ([str(shim), str(ndode_root)] if shim else []))
    try:
        r = subprocess.run([sys.executable, "-c", SEEDED, f"{name}.py", *args], cwd=workdir, env=env,
                           capture_output=True, text=True, timeout=timeout)
        lines = [x for x in r.stdout.splitlines() if x.strip()]
        return r.returncode, lines[-3:] or r.stderr.strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
        return "timeout", []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("torchdiffeq", type=Path, help="a checkout of rtqichen/torchdiffeq")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(EXAMPLES)}")
    ap.add_argument("--ndode-root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per run")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(EXAMPLES)
    unknown = sorted(set(names) - set(EXAMPLES))
    if unknown:
        ap.error(f"unknown example(s) {unknown}; known: {', '.join(EXAMPLES)}")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shim = tmp / "shim"
        (shim / "torchdiffeq").mkdir(parents=True)
        (shim / "torchdiffeq" / "__init__.py").write_text(SHIM)
        for name in names:
            base, adjoint = EXAMPLES[name]
            for flags in ([base] + ([base + adjoint] if adjoint else [])):
                results = {}
                for lib in ("ndode", "torchdiffeq"):
                    work = tmp / f"{lib}-{name}"
                    shutil.rmtree(work, ignore_errors=True)
                    shutil.copytree(args.torchdiffeq / "examples", work)
                    results[lib] = run_one(work, name, flags, shim if lib == "ndode" else None, args.ndode_root,
                                           args.timeout)
                print(f"== {name} {' '.join(flags)}", flush=True)
                for lib, (rc, lines) in results.items():
                    print(f"  {lib:11s} exit {rc}: " + " | ".join(lines), flush=True)
                failed += results["ndode"][0] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run torchdiffeq's own test suite against ndode through a shim package named ``torchdiffeq``.

    python scripts/torchdiffeq_suite.py PATH/TO/torchdiffeq [--files odeint_tests.py ...] [--ndode-root .]

``PATH/TO/torchdiffeq`` is a checkout of github.com/rtqichen/torchdiffeq (only
its ``tests/`` folder is read; nothing of it is copied into this repository).
The script writes, to a temporary folder, a package ``torchdiffeq`` whose
``odeint``, ``odeint_adjoint`` and ``odeint_event`` are ndode's, copies the
tests next to it, cuts the method lists of ``tests/problems.py`` to the
methods ndode has (at import, by filtering its tuples), and runs each test
file in its own process with unittest, counting tests and subtests. It prints
per file: tests passed/failed, subtests passed/failed, and one line per
failing subtest (its parameters and the last line of the error).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

FILES = ("odeint_tests.py", "gradient_tests.py", "api_tests.py", "norm_tests.py", "event_tests.py")

SHIM = '''"""A shim: torchdiffeq's names, ndode's solvers (written by scripts/torchdiffeq_suite.py)."""
from ndode import odeint, odeint_adjoint
try:
    from ndode import odeint_event
except ImportError:  # an ndode from before odeint_event
    pass
'''

# Runs inside the child process: filter problems.py's method tuples, run one test module, print JSON counts.
RUNNER = textwrap.dedent('''
    import json, sys, traceback, unittest
    import ndode, problems
    have = set(getattr(ndode, "REGISTRY", ())) or set(getattr(ndode, "METHODS", ()))
    try:  # an ndode from before the method registry
        from ndode._core import _check_method
        _check_method("scipy_solver")
        have.add("scipy_solver")
    except Exception:
        pass
    for name in dir(problems):
        value = getattr(problems, name)
        if name.isupper() and isinstance(value, tuple) and all(isinstance(m, str) for m in value) and name.endswith("METHODS"):
            setattr(problems, name, tuple(m for m in value if m in have))
    module = __import__(sys.argv[1])

    class Counting(unittest.TestResult):
        def __init__(self):
            super().__init__()
            self.sub_ok, self.sub_bad, self.failed_tests, self.lines = 0, 0, set(), []
        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is None:
                self.sub_ok += 1
            else:
                self.sub_bad += 1
                self.failed_tests.add(test.id())
                msg = "".join(traceback.format_exception_only(err[0], err[1])).strip().splitlines()[-1][:240]
                self.lines.append(f"{test.id().split('.', 1)[1]} {subtest._subDescription()}: {msg}")
        def addError(self, test, err):
            super().addError(test, err)
            self.failed_tests.add(test.id())
            msg = "".join(traceback.format_exception_only(err[0], err[1])).strip().splitlines()[-1][:240]
            self.lines.append(f"{test.id().split('.', 1)[1]}: ERROR {msg}")
        def addFailure(self, test, err):
            super().addFailure(test, err)
            self.failed_tests.add(test.id())
            msg = "".join(traceback.format_exception_only(err[0], err[1])).strip().splitlines()[-1][:240]
            self.lines.append(f"{test.id().split('.', 1)[1]}: FAIL {msg}")

    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    result = Counting()
    suite.run(result)
    n = result.testsRun
    print("@@JSON@@" + json.dumps(dict(tests=n, tests_failed=len(result.failed_tests), subtests_passed=result.sub_ok,
                                       subtests_failed=result.sub_bad, failures=result.lines)))
''')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkout", type=Path, help="a checkout of rtqichen/torchdiffeq (its tests/ folder is used)")
    ap.add_argument("--files", nargs="*", default=list(FILES), help="test files to run (default: %(default)s)")
    ap.add_argument("--ndode-root", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="the folder holding the ndode package to test (default: this repository)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per test file")
    ap.add_argument("--json", type=Path, help="also write the counts and failures to this file")
    args = ap.parse_args(argv)
    tests = args.checkout / "tests"
    if not (tests / "problems.py").is_file():
        ap.error(f"{tests} has no problems.py: not a torchdiffeq checkout")
    out = {}
    with tempfile.TemporaryDirectory(prefix="tdq_shim_") as tmp:
        tmp = Path(tmp)
        (tmp / "torchdiffeq").mkdir()
        (tmp / "torchdiffeq" / "__init__.py").write_text(SHIM)
        work = tmp / "tests"
        shutil.copytree(tests, work)
        (work / "_ndode_runner.py").write_text(RUNNER)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp), str(work), str(args.ndode_root.resolve())]),
                   WANDB_MODE="disabled")
        for name in args.files:
            if not (work / name).is_file():
                print(f"{name}: not in this checkout (skipped)")
                continue
            start = time.time()
            try:
                proc = subprocess.run([sys.executable, "_ndode_runner.py", name[:-3]], cwd=work, env=env,
                                      capture_output=True, text=True, timeout=args.timeout)
                text = proc.stdout
            except subprocess.TimeoutExpired:
                print(f"{name}: timed out after {args.timeout:.0f} s")
                continue
            line = next((x for x in text.splitlines() if x.startswith("@@JSON@@")), None)
            if line is None:
                print(f"{name}: did not run\n{proc.stderr[-2000:]}")
                out[name] = dict(error=proc.stderr[-2000:])
                continue
            r = json.loads(line[len("@@JSON@@"):])
            r["seconds"] = round(time.time() - start, 1)
            out[name] = r
            print(f"{name}: tests {r['tests'] - r['tests_failed']} passed / {r['tests_failed']} failed; "
                  f"subtests {r['subtests_passed']} passed / {r['subtests_failed']} failed ({r['seconds']} s)")
            for x in r["failures"]:
                print(f"    {x}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Choose each flow's optimiser and learning rate for the CNF experiment on its validation loss alone.

The procedure (docs/cnf.md, "Choosing learning rates"), the same for the planar flow and the CNF:

1. For each (task, flow) — ``density_planar``, ``density_cnf`` (Figure 4), ``mle_planar``, ``mle_cnf`` (Figure 5) —
   ``configs/cnf_select.yaml`` lists candidate (optimiser, learning rate) pairs, the cells they are tried on and a
   shortened number of iterations (the same schedule shape: the decay comes at the same fraction of the run).
2. Each candidate is run on each of those cells with the selection seed (never one of the tables' seeds), its
   records under ``results/local/select`` (apart from the runs the tables read).
3. The candidate with the lowest validation metric (``kl_val``: the true KL on fixed base draws; ``nll_val``: the NLL
   of a held-out validation sample; neither is a reported number), averaged over the cells, is chosen. A candidate
   whose run failed (a non-finite loss) or is missing counts as worst.

    python scripts/select_cnf.py --budget cpu sweep density_cnf     # the selection runs' overrides, a line per optimiser
    python scripts/select_cnf.py --budget cpu choose density_cnf    # the chosen `optim=... lr=...` overrides
    python scripts/select_cnf.py --budget cpu report                # results/local/cpu/tables/cnf_selection.{md,csv}
    python scripts/select_cnf.py --budget cpu --publish report      # results/tables/ (with `make publish BUDGET=cpu`)

``make select-cnf BUDGET=cpu`` runs the sweeps and writes the report; ``make reproduce-cnf`` runs it first and passes
each flow's choice to its runs. The tables never see these runs, and nothing is chosen on a test number.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "configs" / "cnf_select.yaml"
KEYS = ("density_planar", "density_cnf", "mle_planar", "mle_cnf")
ROOT = Path("results/local/select")  # run_root of the selection runs: not under results/runs, which the tables read


def load_spec(budget: str, path: Path = SPEC) -> dict:
    """The selection spec of ``budget`` (a ValueError naming the known budgets otherwise)."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if budget not in spec:
        raise ValueError(f"--budget {budget!r}: {path} has no selection for it; budgets: {sorted(spec)}")
    s = spec[budget]
    missing = [k for k in KEYS if k not in s]
    if missing:
        raise ValueError(f"{path}: budget {budget!r} lacks {missing}")
    return s


def _check_key(key: str) -> None:
    if key not in KEYS:
        raise ValueError(f"key={key!r} is not one of {list(KEYS)}")


def sweep_lines(spec: dict, key: str) -> list[str]:
    """The Hydra overrides of ``key``'s selection runs: one line per optimiser (each with its own lr grid)."""
    _check_key(key)
    k = spec[key]
    flow = key.split("_", 1)[1]
    cells = " ".join(f"{opt}={','.join(str(v) for v in vals)}" for opt, vals in k["cells"].items())
    lines = []
    for optim, lrs in k["candidates"].items():
        lines.append(f"{cells} flow={flow} seed={spec['seed']} optim={optim} lr={','.join(f'{lr:g}' for lr in lrs)} "
                     f"budget.plan.{key}.steps={k['steps']}" + (f" {k['extra']}" if k.get("extra") else ""))
    return lines


def selection_table(runs: pd.DataFrame, spec: dict, key: str) -> pd.DataFrame:
    """One row per candidate of ``key``: its validation metric on each cell, their mean (``val``), ``chosen``.

    ``runs``: the selection runs (``load_runs(root, finished_only=False)``) at the budget. A candidate's cell without
    a finished run (missing, or failed with a non-finite loss) is +inf: such a candidate is never chosen over one
    that finished everywhere."""
    _check_key(key)
    k = spec[key]
    task, flow = key.split("_", 1)
    metric = "kl_val" if task == "density" else "nll_val"
    steps = int(k["steps"])
    cells = [(d, int(s)) for d in k["cells"]["data"] for s in k["cells"]["size"]]
    rows = []
    for optim, lrs in k["candidates"].items():
        for lr in lrs:
            row = {"key": key, "optim": optim, "lr": float(lr)}
            vals = []
            for data, size in cells:
                v = math.inf
                if len(runs) and metric in runs:
                    hit = runs[(runs["flow"] == flow) & (runs["data"] == data) & (runs["size"] == size)
                               & (runs["optim"] == optim) & (runs["lr"].astype(float) == float(lr))
                               & (runs["seed"] == spec["seed"]) & (runs["steps"] == steps)
                               & (runs["status"] == "done")]
                    x = pd.to_numeric(hit[metric], errors="coerce").dropna()
                    if len(x) and math.isfinite(float(x.iloc[-1])):
                        v = float(x.iloc[-1])
                row[f"{data}/{size}"] = v
                vals.append(v)
            row["val"] = sum(vals) / len(vals) if all(math.isfinite(v) for v in vals) else math.inf
            rows.append(row)
    t = pd.DataFrame(rows)
    best = t["val"].idxmin() if len(t) and math.isfinite(t["val"].min()) else None
    t["chosen"] = [i == best for i in t.index]
    return t


def chosen(table: pd.DataFrame) -> str:
    """``optim=<o> lr=<lr>`` of the chosen candidate (a LookupError when no candidate finished everywhere)."""
    hit = table[table["chosen"]]
    if hit.empty:
        raise LookupError(f"{table['key'].iloc[0] if len(table) else '?'}: no candidate has a finished selection run "
                          "on every cell; run `make select-cnf` first (records under results/local/select)")
    r = hit.iloc[0]
    return f"optim={r['optim']} lr={r['lr']:g}"


def selection_markdown(tables: list[pd.DataFrame], budget: str, spec: dict) -> str:
    lines = [f"**Learning-rate selection for the CNF experiment, budget={budget}** (validation metric after the "
             f"shortened runs, seed {spec['seed']}; chosen: the lowest mean; inf: the run failed or is missing)", ""]
    for t in tables:
        key = t["key"].iloc[0]
        k = spec[key]
        cells = [c for c in t.columns if "/" in c]
        metric = "KL(q‖p) on validation draws" if key.startswith("density") else "validation NLL"
        lines += [f"*{key}* ({k['steps']} iterations per run; {metric}, nats)", "",
                  "| optimiser | lr | " + " | ".join(cells) + " | mean | chosen |",
                  "| --- | ---: |" + " ---: |" * (len(cells) + 1) + " --- |"]
        for _, r in t.iterrows():
            vals = " | ".join(f"{r[c]:.4f}" for c in cells)
            mark = "**yes**" if r["chosen"] else ""
            lines.append(f"| {r['optim']} | {r['lr']:g} | {vals} | {r['val']:.4f} | {mark} |")
        lines.append("")
    return "\n".join(lines)


def _runs(root: Path, budget: str) -> pd.DataFrame:
    from ndode.harness import load_runs

    d = root / "cnf"
    if not d.is_dir():
        return pd.DataFrame()
    df = load_runs(d, finished_only=False)
    return df[df["budget.name"] == budget] if len(df) and "budget.name" in df else df.iloc[:0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", required=True, help="smoke | cpu | paper")
    ap.add_argument("--root", default=str(ROOT), help="run_root of the selection runs (default: %(default)s)")
    ap.add_argument("--out", help="report folder (default: results/local/<budget>)")
    ap.add_argument("--publish", action="store_true", help="write the report into the published results/ (beside "
                    "the tables `make publish BUDGET=<budget>` writes; never for smoke)")
    ap.add_argument("action", choices=("sweep", "choose", "report"))
    ap.add_argument("key", nargs="?", help=f"one of {list(KEYS)} (sweep, choose)")
    a = ap.parse_args(argv)
    if a.budget == "auto":  # as the runs resolve it: paper with CUDA, else cpu
        from ndode.harness.config import auto_budget

        a.budget = auto_budget()
    try:
        spec = load_spec(a.budget)
        if a.action in ("sweep", "choose") and a.key is None:
            raise ValueError(f"{a.action} needs a key: one of {list(KEYS)}")
        if a.action == "sweep":
            print("\n".join(sweep_lines(spec, a.key)))
            return 0
        runs = _runs(Path(a.root), a.budget)
        if a.action == "choose":
            print(chosen(selection_table(runs, spec, a.key)))
            return 0
        tables = [selection_table(runs, spec, k) for k in KEYS]
        from ndode.report.outputs import check_publish, output_root

        if a.publish:
            check_publish("cnf", a.budget)
        out = output_root(a.out, a.publish, a.budget)
        (out / "tables").mkdir(parents=True, exist_ok=True)
        (out / "tables" / "cnf_selection.md").write_text(selection_markdown(tables, a.budget, spec), encoding="utf-8")
        pd.concat(tables).to_csv(out / "tables" / "cnf_selection.csv", index=False)
        print(f"wrote {out / 'tables' / 'cnf_selection.md'}; chosen: "
              + "; ".join(f"{t['key'].iloc[0]}: {chosen(t) if t['chosen'].any() else 'none'}" for t in tables))
        return 0
    except (ValueError, LookupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

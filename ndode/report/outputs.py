"""Where tables and figures go: the published results, or a git-ignored folder per budget.

``results/tables``, ``results/figures`` and ``results/summary`` are the *published* results: checked in, shown by
the README, each made from the runs of one budget. They change only on purpose, with ``--publish`` and the
budget they were made with (``make publish BUDGET=cpu``). Everything else, smoke runs, a user's own runs, a
quick ``make tables`` after a sweep, goes to ``results/local/<budget>/`` (the same ``tables``, ``figures`` and
``summary`` layout), which git ignores.
"""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["PUBLISHED", "LOCAL", "output_root", "check_publish", "published_budgets"]

PUBLISHED = Path("results")
LOCAL = PUBLISHED / "local"
NEVER_PUBLISHED = ("smoke",)  # seconds-long runs that test the code path; their numbers mean nothing


def output_root(out: str | Path | None, publish: bool, budget: str, several: bool = False) -> Path:
    """The folder that gets ``tables/``, ``figures/`` and ``summary/`` for the runs at ``budget``.

    An explicit ``out`` is used as given (with several budgets, ``<out>/<budget>``); otherwise the published
    root with ``publish``, else ``results/local/<budget>``.
    """
    if out is not None:
        return Path(out) / budget if several else Path(out)
    return PUBLISHED if publish else LOCAL / budget


def published_budgets(experiment: str, root: str | Path = PUBLISHED) -> set[str]:
    """The budgets of the runs behind an experiment's published results (its ``summary/<experiment>.csv``)."""
    path = Path(root) / "summary" / f"{experiment}.csv"
    if not path.is_file():
        return set()
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["budget.name"] for r in csv.DictReader(fh) if r.get("budget.name")}


def check_publish(experiment: str, budget: str, root: str | Path = PUBLISHED) -> None:
    """Refuse to publish smoke results, or to replace published results made at another budget."""
    if budget in NEVER_PUBLISHED:
        raise ValueError(f"budget {budget} is never published (its runs only test the code path); its tables and "
                         f"figures go to {LOCAL / budget} without --publish")
    made = published_budgets(experiment, root)
    if made and budget not in made:
        raise ValueError(f"the published {experiment} results were made at budget {', '.join(sorted(made))} "
                         f"({Path(root) / 'summary' / (experiment + '.csv')}); publishing budget {budget} would "
                         "replace them with another budget's. To switch on purpose, delete that file first")

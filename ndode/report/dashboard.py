"""The W&B dashboard: a report (and a workspace view) with one section per paper table and figure.

Three layers, so that all but the last run offline:

* :func:`outline` - a pure function of the registry (:mod:`ndode.report.registry`) and the
  collected runs (:func:`collect_runs`): sections, their panels, the runs and keys each draws on;
* :func:`format_outline` - that outline as text (``make dashboard DRY_RUN=1``, ``--dry-run``);
* :func:`build_report` / :func:`build_workspace` - the ``wandb-workspaces`` objects for it
  (built offline when the entity is given; saving them needs W&B, see scripts/wandb_dashboard.py).

It also writes each experiment's ``summary`` run (:func:`publish_summaries`, called by
``make tables``): its tables and figures, one run per (experiment, budget) with a fixed id,
so a new ``make tables`` replaces the previous content instead of adding a run.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .registry import REGISTRY, Experiment, View, summary_key

__all__ = ["Outline", "OutlineSection", "outline", "format_outline", "collect_runs", "build_report",
           "build_workspace", "summary_run_id", "publish_summary", "publish_summaries", "SUMMARY_JOB"]

log = logging.getLogger("ndode.report")
SUMMARY_JOB = "summary"


@dataclass(frozen=True)
class OutlineSection:
    experiment: str
    heading: str  # the experiment's title (one H1 per experiment)
    title: str  # the paper table or figure (an H2)
    caption: str
    views: tuple[View, ...]
    budget: str
    runs: tuple[str, ...]  # the training runs (names) its runs table and "runs" views draw on
    summary_run: str  # id of the summary run its "summary" views draw on
    columns: tuple[str, ...]  # summary metrics shown in its runs table
    note: str = ""  # set when there is nothing to draw: no runs yet

    def filters(self, source: str) -> tuple[tuple[str, str, object], ...]:
        """The W&B run filter of a runset: (field, operator, value), AND-ed."""
        job = SUMMARY_JOB if source == "summary" else self.experiment
        return (("Group", "==", self.experiment), ("JobType", "==", job), ("Tags", "in", (f"budget={self.budget}",)))


@dataclass(frozen=True)
class Outline:
    title: str
    budget: str
    sections: tuple[OutlineSection, ...]


def summary_run_id(experiment: str, budget: str) -> str:
    """The fixed W&B id of an experiment's summary run at a budget."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"summary-{experiment}-{budget}")


def collect_runs(runs: pd.DataFrame | None, results: str | Path = "results") -> pd.DataFrame:
    """One row per finished run, columns ``experiment``, ``budget``, ``run`` (its name).

    From the collected run records ``runs`` (``ndode.harness.load_runs``; None: there are none); an
    experiment without records there comes from the committed per-run tables
    ``<results>/summary/<experiment>.csv`` (a fresh clone has no run records, and those tables are
    where its numbers come from).
    """
    frames = []
    if runs is not None and not runs.empty:
        frames.append(pd.DataFrame({"experiment": runs["experiment"], "budget": runs["budget.name"],
                                    "run": runs["run_name"]}))
    have = set(frames[0]["experiment"]) if frames else set()
    for path in sorted(Path(results, "summary").glob("*.csv")):
        if path.stem in have:
            continue
        df = pd.read_csv(path)
        budget = df["budget.name"] if "budget.name" in df else df.get("budget")
        if budget is None or "run" not in df:
            continue
        frames.append(pd.DataFrame({"experiment": path.stem, "budget": budget,
                                    "run": df["run"].astype(str).str.rsplit("/", n=1).str[-1]}))
    if not frames:
        return pd.DataFrame(columns=["experiment", "budget", "run"])
    return pd.concat(frames, ignore_index=True).sort_values(["experiment", "budget", "run"]).reset_index(drop=True)


def outline(registry: dict[str, Experiment], runs: pd.DataFrame, budget: str,
            experiments: list[str] | None = None) -> Outline:
    """The report's sections: every registered experiment (or those named), in registry order.

    An experiment with runs at ``budget`` gets one section per registry section; one without
    gets a single section saying so and how to make them.
    """
    unknown = sorted(set(experiments or ()) - set(registry))
    if unknown:
        raise KeyError(f"no dashboard entry for {unknown}; registered: {list(registry)} (ndode/report/registry.py)")
    sections = []
    for name, exp in registry.items():
        if experiments and name not in experiments:
            continue
        mine = runs[(runs["experiment"] == name) & (runs["budget"].astype(str) == str(budget))]
        names = tuple(sorted(mine["run"].astype(str)))
        common = dict(experiment=name, heading=exp.title, budget=budget, runs=names,
                      summary_run=summary_run_id(name, budget), columns=exp.metrics)
        if not names:
            how = f" ({exp.reproduce.replace('<budget>', budget)}, then make tables and make sync)" if exp.reproduce else ""
            sections.append(OutlineSection(title=exp.title, caption="", views=(), **common,
                                           note=f"No runs yet at budget={budget}{how}."))
            continue
        sections += [OutlineSection(title=s.title, caption=s.caption, views=s.views, **common) for s in exp.sections]
    return Outline(title=f"Neural ODEs (Chen et al. 2018) reproduced: paper tables and figures, budget={budget}",
                   budget=budget, sections=tuple(sections))


def _filter_text(section: OutlineSection, source: str) -> str:
    return ", ".join(f"{f} {op} {list(v) if isinstance(v, tuple) else v}" for f, op, v in section.filters(source))


def format_outline(o: Outline, entity: str | None, project: str) -> str:
    """The outline as text: sections, panels, and the runs and keys each draws on."""
    lines = [f"Report: {o.title}", f"  in {entity or '<your default entity>'}/{project}"]
    current = None
    for s in o.sections:
        if s.experiment != current:
            current = s.experiment
            lines += ["", f"# {s.heading}"]
            if s.note:
                lines.append(f"  {s.note}")
                continue
            lines.append(f"  {len(s.runs)} run(s) at budget={s.budget}: {', '.join(s.runs)}")
            lines.append(f"  each section's runs table: {_filter_text(s, 'runs')}; columns {', '.join(s.columns)}")
            lines.append(f"  summary run {s.summary_run}: {_filter_text(s, 'summary')}")
        lines.append(f"  ## {s.title}")
        for v in s.views:
            src = "summary run" if v.source == "summary" else "runs"
            lines.append(f"     {v.kind:<5} {', '.join(v.keys)}  <- {src}" + (f" ({v.title})" if v.title else ""))
    return "\n".join(lines) + "\n"


# ---- wandb-workspaces objects (imported only here: the outline needs none of it)
def _runset(wr, ws, s: OutlineSection, source: str, entity: str, project: str):
    filters = []
    for field_, _op, value in s.filters(source):
        filters.append(ws.Tags().isin(list(value)) if field_ == "Tags" else ws.Metric(field_) == value)
    name = f"{s.experiment} {'summary' if source == 'summary' else 'runs'} ({s.budget})"
    pinned = [f"summary:{m}" for m in s.columns] if source == "runs" else []
    return wr.Runset(entity=entity, project=project, name=name, filters=ws.And(*filters), pinned_columns=pinned)


def _panel(wr, v: View):
    title = v.title or ", ".join(v.keys)
    if v.kind == "line":
        return wr.LinePlot(title=title, x="step", y=list(v.keys))
    if v.kind == "bar":
        return wr.BarPlot(title=title, metrics=list(v.keys))
    if v.kind == "image":
        return wr.MediaBrowser(title=title, media_keys=list(v.keys), num_columns=1, layout=wr.Layout(w=24, h=12))
    return wr.WeavePanelSummaryTable(table_name=v.keys[0], layout=wr.Layout(w=24, h=12))


def build_report(o: Outline, entity: str, project: str):
    """A ``wandb_workspaces.reports.v2.Report`` for the outline (not saved: call ``.save()``)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    blocks = [wr.P("Built by `make dashboard` (scripts/wandb_dashboard.py) from the ndode run records. "
                   "Tables and figures come from each experiment's `summary` run (written by `make tables`); "
                   "curves, media and the runs tables from the training runs.")]
    current = None
    for s in o.sections:
        if s.experiment != current:
            current = s.experiment
            blocks.append(wr.H1(s.heading))
        if s.note:
            blocks.append(wr.P(s.note))
            continue
        blocks.append(wr.H2(s.title))
        if s.caption:
            blocks.append(wr.P(s.caption))
        summary = [_panel(wr, v) for v in s.views if v.source == "summary"]
        if summary:
            blocks.append(wr.PanelGrid(runsets=[_runset(wr, ws, s, "summary", entity, project)], panels=summary))
        runs = [_panel(wr, v) for v in s.views if v.source == "runs"]
        blocks.append(wr.PanelGrid(runsets=[_runset(wr, ws, s, "runs", entity, project)], panels=runs))
    return wr.Report(entity=entity, project=project, title=o.title[:128], blocks=blocks, width="fluid",
                     description=f"budget={o.budget}")


def build_workspace(o: Outline, entity: str, project: str):
    """The same sections as a workspace view (one runset for all: the budget's runs)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = [ws.Section(name=f"{s.experiment}: {s.title}", panels=[_panel(wr, v) for v in s.views], is_open=True)
                for s in o.sections if not s.note]
    return ws.Workspace(entity=entity, project=project, name=f"ndode paper results (budget {o.budget})",  # no "=": the name validator takes it for an emoji
                        sections=sections,
                        runset_settings=ws.RunsetSettings(filters=ws.And(ws.Tags().isin([f"budget={o.budget}"]))))


# ---- the summary runs (make tables)
def _first(df: pd.DataFrame, column: str, default=None):
    if column not in df:
        return default
    v = df[column].dropna()
    return v.iloc[0] if len(v) else default


def _budget_rows(path: Path, budget: str) -> tuple[list[str], list[list]]:
    df = pd.read_csv(path)
    for col in ("budget.name", "budget"):
        if col in df:
            df = df[df[col].astype(str) == str(budget)]
            break
    df = df.astype(object).where(df.notna(), None)
    return [str(c) for c in df.columns], df.values.tolist()


def publish_summary(exp: Experiment, runs: pd.DataFrame, budget: str, results: Path, runs_root: Path) -> Path | None:
    """Write the experiment's summary run at ``budget``; return its W&B directory (None: W&B off).

    Its tables are the rows of ``exp.tables`` at that budget, its images ``exp.figures`` as they are
    under ``results`` now; entity, project and mode are those of the runs' ``logger`` config. An
    earlier offline copy of the same run is removed first: the new one replaces it.
    """
    from ndode.io import git_state
    from ndode.wandb_mirror import WandbMirror, resolve_mode

    if "logger.wandb" in runs and not runs["logger.wandb"].fillna(True).astype(bool).any():
        return None  # every run was made with logger=none
    mode = _first(runs, "logger.mode")
    if resolve_mode(mode) == "disabled":
        return None
    rid = summary_run_id(exp.name, budget)
    wdir = Path(runs_root) / exp.name / "_summary" / f"budget={budget}"
    for old in sorted(wdir.glob(f"wandb/offline-run-*-{rid}")):
        shutil.rmtree(old, ignore_errors=True)
    tables = {summary_key(rel): _budget_rows(Path(results) / rel, budget) for rel in exp.tables
              if (Path(results) / rel).exists()}
    images = {summary_key(rel): Path(results) / rel for rel in exp.figures if (Path(results) / rel).exists()}
    git = git_state()
    tags = [f"budget={budget}", f"commit={(git['commit'] or 'unknown')[:12]}"] + (["dirty"] if git["dirty"] else [])
    names = sorted(runs["run_name"].astype(str)) if "run_name" in runs else []
    wdir.mkdir(parents=True, exist_ok=True)
    mirror = WandbMirror(enabled=True, mode=mode, project=_first(runs, "logger.project", "ndode"),
                         entity=_first(runs, "logger.entity"), run_dir=wdir, name=f"{exp.name} summary ({budget})",
                         group=exp.name, job_type=SUMMARY_JOB, run_id=rid, tags=tags, quiet=True,
                         config={"experiment": exp.name, "budget": budget, "runs": names, "tables": list(exp.tables),
                                 "figures": list(exp.figures), "git": git})
    mirror.publish(tables, images)
    mirror.summary({"n_runs": len(names)})
    ok = mirror.active
    mirror.finish()
    return wdir if ok else None


def publish_summaries(df: pd.DataFrame, experiments, results: str | Path, runs_root: str | Path,
                      registry: dict[str, Experiment] = REGISTRY) -> list[str]:
    """One summary run per (experiment, budget) in ``df`` (the collector's runs); a line of text for each."""
    out = []
    for name in experiments:
        if name not in registry:
            out.append(f"{name}: no dashboard entry in ndode/report/registry.py, no summary run")
            continue
        part = df[df["experiment"] == name]
        for budget in sorted(part["budget.name"].dropna().astype(str).unique()):
            try:
                d = publish_summary(registry[name], part[part["budget.name"].astype(str) == budget], budget,
                                    Path(results), Path(runs_root))
            except Exception as e:  # noqa: BLE001 - W&B is a mirror: the tables on disk are written already
                log.warning("%s: summary run at budget=%s failed: %s: %s", name, budget, type(e).__name__, e)
                d = None
            if d is not None:
                out.append(f"{name}: W&B summary run {summary_run_id(name, budget)} -> {d}")
    if any("W&B summary run" in line for line in out):
        # run.finish() returns before W&B's service has flushed an offline run to disk; teardown waits
        # for it, so the offline files are complete when make tables returns (or deletes one, above)
        try:
            import wandb

            wandb.teardown()
        except Exception as e:  # noqa: BLE001
            log.warning("W&B teardown failed: %s: %s", type(e).__name__, e)
    return out

"""The W&B dashboard: media in the runs, the summary runs of `make tables`, the report outline,
and `make dashboard` without a key. W&B runs offline here; nothing reaches the network."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("hydra")
wandb = pytest.importorskip("wandb")

from _support import compose_demo, compose_mnist, load_script  # noqa: E402

from ndode.harness import load_runs, run_experiment  # noqa: E402
from ndode.report.dashboard import collect_runs, format_outline, outline, summary_run_id  # noqa: E402
from ndode.report.registry import REGISTRY, Experiment, Section, View  # noqa: E402
from ndode.report.tables import TABLES  # noqa: E402
from ndode.wandb_mirror import MAX_TABLE_ROWS, array_tables  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ---- reading an offline W&B run: its .wandb log (LevelDB log format of protobuf records) and files/
def _wandb_records(run_dir: Path):
    """The records of an offline run's .wandb file (32 KiB blocks of chunks with 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("*.wandb")
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", f"{path} is not a W&B log"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL/FIRST start a record, MIDDLE/LAST continue it
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def _offline_run(wandb_dir: Path) -> dict:
    """An offline run's id, group, job type, tags, summary and history keys, and media files."""
    wandb.teardown()  # W&B's service writes an offline run after run.finish() returns; this waits for it
    (run_dir,) = sorted(wandb_dir.glob("offline-run-*"))
    info = {"dir": run_dir, "summary": {}, "history_keys": set()}
    for r in _wandb_records(run_dir):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            info.update(id=r.run.run_id, group=r.run.run_group, job_type=r.run.job_type, tags=list(r.run.tags))
        elif kind == "summary":
            for item in r.summary.update:
                info["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            info["history_keys"] |= {i.key or "/".join(i.nested_key) for i in r.history.item}
    # a media value comes either whole (a JSON object) or split into "<key>/<field>" items: join those
    for k in [k for k in info["summary"] if k.endswith("/_type")]:
        key = k[:-len("/_type")]
        info["summary"][key] = {f[len(key) + 1:]: v for f, v in info["summary"].items() if f.startswith(key + "/")}
    info["history_keys"] = {k[:-len("/_type")] if k.endswith("/_type") else k for k in info["history_keys"]}
    info["media"] = sorted(p.relative_to(run_dir / "files" / "media").as_posix()
                           for p in (run_dir / "files" / "media").rglob("*") if p.is_file())
    return info


def _table(info: dict, key: str) -> pd.DataFrame:
    """A table the run logged under ``key`` (read back from its media file)."""
    entry = info["summary"][key]
    assert entry["_type"] == "table-file", entry
    t = json.loads((info["dir"] / "files" / entry["path"]).read_text())
    return pd.DataFrame(t["data"], columns=t["columns"])


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for k in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(k, raising=False)


def _demo_run(root: Path, *over: str) -> Path:
    from ndode.experiments import ode_demo

    cfg = compose_demo("budget=smoke", "quiet=true", f"run_root={root}", *over)
    run_dir = root / "ode_demo" / "budget=smoke,seed=0"
    run_experiment(cfg, ode_demo.ODEDemoTask, run_dir=run_dir)
    return run_dir


# ---- media in the runs, the summary runs
@pytest.mark.slow
def test_demo_smoke_run_logs_its_figure_and_arrays_and_make_tables_writes_a_summary_run(tmp_path, offline, capsys):
    run_dir = _demo_run(tmp_path / "runs")
    info = _offline_run(run_dir / "wandb")
    assert info["group"] == info["job_type"] == "ode_demo" and "budget=smoke" in info["tags"]
    assert {"figures/ode_demo", "arrays/ode_demo/y_learned", "arrays/ode_demo/learned_field"} <= info["history_keys"]
    assert info["summary"]["figures/ode_demo"]["_type"] == "image-file"
    assert any(m.startswith("images/figures/ode_demo_") and m.endswith(".png") for m in info["media"])
    y = _table(info, "arrays/ode_demo/y_learned")
    with np.load(run_dir / "arrays" / "ode_demo.npz") as z:
        np.testing.assert_allclose(y.to_numpy(), z["y_learned"], rtol=1e-6)  # the array itself, row by row
        field = _table(info, "arrays/ode_demo/learned_field")
        assert list(field.columns) == ["i0", "i1", "learned_field[0]", "learned_field[1]"]
        assert len(field) == 21 * 21 and field.iloc[22, 2] == pytest.approx(float(z["learned_field"][1, 1, 0]))

    results = tmp_path / "results"
    make_tables = load_script("make_tables")
    for _ in range(2):  # the second make tables replaces the first summary run, it does not add one
        assert make_tables.main(["--runs", str(tmp_path / "runs"), "--out", str(results)]) == 0
    assert "W&B summary run summary-ode_demo-smoke" in capsys.readouterr().out
    summary = _offline_run(tmp_path / "runs" / "ode_demo" / "_summary" / "budget=smoke" / "wandb")
    assert summary["id"] == summary_run_id("ode_demo", "smoke") and summary["job_type"] == "summary"
    assert summary["group"] == "ode_demo" and "budget=smoke" in summary["tags"]
    assert any(t.startswith("commit=") for t in summary["tags"])
    table = _table(summary, "tables/ode_demo")
    assert table["run"].tolist() == ["ode_demo/budget=smoke,seed=0"]
    assert table["mse_heldout"].iloc[0] == pytest.approx(json.loads((run_dir / "summary.json").read_text())["mse_heldout"])
    assert "figures/ode_demo" not in summary["summary"]  # no results/figures/ode_demo.png: make figures not run
    # the summary run is not a run record: the collector still finds exactly one run
    assert collect_runs(load_runs(tmp_path / "runs"), results)["run"].tolist() == ["budget=smoke,seed=0"]


@pytest.mark.slow
def test_mnist_smoke_run_logs_its_sweep_and_the_summary_run_holds_table1(tmp_path, offline, data_root):
    from ndode.experiments import mnist

    data = data_root
    runs, results = tmp_path / "runs", tmp_path / "results"
    for model in ("odenet", "mlp"):
        cfg = compose_mnist(f"model={model}", "budget=smoke", "quiet=true", f"data.root={data}", f"run_root={runs}")
        run_experiment(cfg, mnist.MNISTTask, run_dir=runs / "mnist" / f"budget=smoke,model={model},seed=0")
    ode = _offline_run(runs / "mnist" / "budget=smoke,model=odenet,seed=0" / "wandb")
    sweep = _table(ode, "arrays/fig3_sweep")
    assert list(sweep.columns) == ["batch", "tol", "nfe_forward", "nfe_backward", "time_s", "rel_error"]
    assert len(sweep) == len(pd.read_csv(runs / "mnist" / "budget=smoke,model=odenet,seed=0" / "arrays" / "fig3_sweep.csv"))
    assert {"eval/test_error", "train/nfe_forward", "train/nfe_backward"} <= ode["history_keys"]

    assert load_script("make_figures").main(["--runs", str(runs), "--out", str(results / "figures"), "--experiment",
                                         "mnist", "--budget", "smoke"]) == 0
    assert load_script("make_tables").main(["--runs", str(runs), "--out", str(results), "--budget", "smoke"]) == 0
    summary = _offline_run(runs / "mnist" / "_summary" / "budget=smoke" / "wandb")
    assert summary["job_type"] == "summary" and "budget=smoke" in summary["tags"]
    t1 = _table(summary, "tables/mnist_table1")
    assert t1["model"].tolist() == ["mlp", "odenet"]  # the paper's row order, the models that ran
    assert t1["paper_error_pct"].tolist() == [1.60, 0.42] and set(t1["budget"]) == {"smoke"}
    assert summary["summary"]["figures/mnist_fig3"]["_type"] == "image-file"


@pytest.mark.slow
def test_disabled_wandb_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    _demo_run(tmp_path / "runs")
    assert load_script("make_tables").main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "results")]) == 0
    assert not list((tmp_path / "runs").rglob("wandb")) and not list((tmp_path / "runs").rglob("_summary"))


@pytest.mark.slow
def test_logger_none_writes_nothing_even_offline(tmp_path, offline):
    _demo_run(tmp_path / "runs", "logger=none")
    assert load_script("make_tables").main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "results")]) == 0
    assert not list((tmp_path / "runs").rglob("wandb")) and not list((tmp_path / "runs").rglob("_summary"))


def test_array_tables_shapes_and_row_cap(tmp_path):
    np.savez(tmp_path / "a.npz", v=np.arange(3.0), m=np.ones((2, 3)), s=np.float64(1.0),
             big=np.arange(3 * MAX_TABLE_ROWS), flag=np.array([True, False]))
    t = array_tables(tmp_path / "a.npz")
    assert set(t) == {"arrays/a/v", "arrays/a/m", "arrays/a/big", "arrays/a/flag"}  # a scalar is no table
    assert t["arrays/a/v"] == (["v"], [[0.0], [1.0], [2.0]])
    assert t["arrays/a/m"][0] == ["m[0]", "m[1]", "m[2]"] and len(t["arrays/a/m"][1]) == 2
    assert len(t["arrays/a/big"][1]) == MAX_TABLE_ROWS and t["arrays/a/big"][1][1] == [3]  # every 3rd row
    assert t["arrays/a/flag"][1] == [[1], [0]]
    (tmp_path / "s.csv").write_text("tol,nfe,what\n1e-3,26,a\n0.01,14,\n")
    assert array_tables(tmp_path / "s.csv") == {"arrays/s": (["tol", "nfe", "what"], [[1e-3, 26, "a"], [0.01, 14, None]])}


# ---- the outline: a pure function of the registry and the collected runs
RUNS = pd.DataFrame({"experiment": ["mnist", "mnist", "ode_demo", "mnist"], "budget": ["cpu", "cpu", "smoke", "smoke"],
                     "run": ["budget=cpu,model=odenet,seed=0", "budget=cpu,model=mlp,seed=0", "budget=smoke,seed=0",
                             "budget=smoke,model=mlp,seed=0"]})


def test_outline_sections_runs_and_keys():
    o = outline(REGISTRY, RUNS, "cpu")
    mnist = [s for s in o.sections if s.experiment == "mnist"]
    assert [s.title for s in mnist] == [s.title for s in REGISTRY["mnist"].sections]
    assert all(s.runs == ("budget=cpu,model=mlp,seed=0", "budget=cpu,model=odenet,seed=0") for s in mnist)
    assert mnist[0].views[0].keys == ("tables/mnist_table1",) and mnist[0].views[0].source == "summary"
    assert mnist[0].summary_run == "summary-mnist-cpu"
    assert ("Tags", "in", ("budget=cpu",)) in mnist[0].filters("runs")
    assert ("JobType", "==", "summary") in mnist[0].filters("summary")
    (demo,) = [s for s in o.sections if s.experiment == "ode_demo"]  # no ode_demo run at cpu: one section saying so
    assert demo.views == () and demo.note.startswith("No runs yet at budget=cpu") and "ode_demo.py budget=cpu" in demo.note
    assert outline(REGISTRY, RUNS, "cpu") == o  # a function of its inputs
    text = format_outline(o, "me", "ndode")
    assert "me/ndode" in text and "## Table 1" in text and "No runs yet at budget=cpu" in text


def test_outline_of_an_unknown_experiment_fails_and_a_new_entry_needs_no_dashboard_edit():
    with pytest.raises(KeyError, match="no dashboard entry for \\['newexp'\\]"):
        outline(REGISTRY, RUNS, "cpu", ["newexp"])
    reg = dict(REGISTRY, newexp=Experiment(
        name="newexp", title="New", tables=("tables/newexp_nll.csv",), metrics=("nll",),
        sections=(Section("NLL", (View("table", ("tables/newexp_nll",), "summary"),)),)))
    runs = pd.concat([RUNS, pd.DataFrame({"experiment": ["newexp"], "budget": ["cpu"], "run": ["budget=cpu,seed=0"]})])
    (new,) = [s for s in outline(reg, runs, "cpu").sections if s.experiment == "newexp"]
    assert new.title == "NLL" and new.runs == ("budget=cpu,seed=0",)
    with pytest.raises(ValueError, match="holds only"):  # a summary view must name one of the entry's files
        Experiment(name="x", title="x", sections=(Section("s", (View("table", ("tables/nope",), "summary"),)),))


def test_every_experiment_with_a_table_or_figure_has_a_dashboard_section():
    """A new experiment in make_tables (TABLES, CUSTOM) or make_figures (FIGURES) needs an entry in
    ndode/report/registry.py: one Experiment with its table and figure files and its sections."""
    with_output = set(TABLES) | set(load_script("make_tables").CUSTOM) | set(load_script("make_figures").FIGURES)
    missing = sorted(name for name in with_output if name not in REGISTRY or not REGISTRY[name].sections)
    assert not missing, f"experiments with tables or figures but no dashboard section: {missing} (docs/dashboard.md)"
    for exp in REGISTRY.values():  # the files an entry names are the ones make tables / make figures write
        assert all(p.startswith(("tables/", "summary/")) for p in exp.tables), exp.tables
        assert all(p.startswith("figures/") for p in exp.figures), exp.figures


def test_docs_and_readme_show_the_outline_of_the_committed_results():
    """docs/dashboard.md holds what --dry-run prints for the committed results; README its section headings."""
    text = format_outline(outline(REGISTRY, collect_runs(None, REPO / "results"), "cpu"), None, "ndode")
    fix = "update them from `python scripts/wandb_dashboard.py --dry-run --runs none`"
    assert text in (REPO / "docs" / "dashboard.md").read_text(encoding="utf-8"), f"docs/dashboard.md: {fix}"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [h.strip() for h in text.splitlines() if h.lstrip().startswith("#") and h.strip() not in readme]
    assert not missing, f"README's Dashboard section lacks {missing}: {fix}"


def test_report_objects_build_offline():
    pytest.importorskip("wandb_workspaces")
    from ndode.report.dashboard import build_report, build_workspace

    o = outline(REGISTRY, RUNS, "cpu")
    report = build_report(o, "me", "ndode")  # constructing is offline; only .save() needs W&B
    kinds = [type(b).__name__ for b in report.blocks]
    assert kinds.count("H1") == len(REGISTRY) and kinds.count("H2") == len(REGISTRY["mnist"].sections)
    grids = [b for b in report.blocks if type(b).__name__ == "PanelGrid"]
    assert "JobType\") == 'summary'" in grids[0].runsets[0].filters
    assert [type(p).__name__ for p in grids[0].panels] == ["WeavePanelSummaryTable"]
    assert all(g.runsets[0].entity == "me" and "budget=cpu" in g.runsets[0].filters for g in grids)
    view = build_workspace(o, "me", "ndode")
    assert [s.name for s in view.sections] == [f"mnist: {s.title}" for s in REGISTRY["mnist"].sections]


# ---- make dashboard without a key
@pytest.mark.slow
def test_make_dashboard_without_key_fails_with_the_message_and_no_network(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    # no key anywhere (no ~/.netrc) and an API address that would hang a connection attempt
    env.update(HOME=str(tmp_path), WANDB_BASE_URL="http://10.255.255.1:81", PYTHONPATH=str(REPO))
    stamps = [".venv/.install-stamp", ".venv/.dashboard-stamp"]  # installed already: make must not pip install
    cmd = ["make", "-s", "dashboard", f"PY={sys.executable}"] + [a for s in stamps for a in ("-o", s)]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)  # a hang fails here
    assert p.returncode != 0
    assert "WANDB_API_KEY" in p.stderr and "wandb login" in p.stderr and "Nothing was published" in p.stderr
    dry = subprocess.run(cmd + ["DASHBOARD_ARGS=--dry-run"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    assert dry.returncode == 0 and dry.stdout.startswith("Report: ") and "budget=cpu" in dry.stdout


def test_media_logs_what_it_can_read_and_never_fails(tmp_path, caplog):
    from ndode.wandb_mirror import WandbMirror

    (tmp_path / "arrays").mkdir()
    (tmp_path / "arrays" / "bad.npz").write_bytes(b"not an npz")
    (tmp_path / "arrays" / "good.csv").write_text("x,y\n1,2\n")

    class Run:
        logged = []

        def log(self, data):
            self.logged.append(data)

    m = WandbMirror(enabled=False, mode=None, project="p", entity=None, run_dir=tmp_path, name="n", group="g",
                    tags=[], config={})
    m.run = Run()
    m.media(tmp_path, step=7)  # no figures/ folder, one unreadable array file
    assert m.active and "bad.npz not logged as a table" in caplog.text
    (data,) = Run.logged
    assert set(data) == {"arrays/good", "step"} and data["step"] == 7

"""The import graph of every module in ``ndode/``, read from the source (AST, lazy imports inside functions
included): it has no cycle, and the engine never imports the torchdiffeq-shaped wrappers above it."""

import ast
import pathlib

import ndode

PKG = pathlib.Path(ndode.__file__).parent
# the solver engine; ndode.api (odeint, odeint_adjoint, odeint_event) sits above it, ndode/__init__ above that
ENGINE = ("ndode.solver", "ndode.adjoint", "ndode.checkpoint_adjoint", "ndode.event", "ndode.scipy_solver",
          "ndode.tableau", "ndode.memory")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def import_graph() -> dict:
    """module -> the ndode modules it imports (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in mods and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict):
    """One cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = "done"
        return None

    for u in sorted(graph):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return None


def test_the_graph_reader_sees_lazy_imports_and_cycles(tmp_path):
    # the checker itself: a cycle closed by an import inside a function is found
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "ndode.ode.types" in graph["ndode.scipy_solver"]
    assert "ndode.solver" in graph["ndode.api"] and "ndode.api" in graph["ndode"]


def test_no_import_cycle_in_ndode():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_engine_never_imports_the_wrappers_or_upward():
    graph = import_graph()
    for name in (*ENGINE, *(m for m in graph if m.startswith("ndode.ode"))):
        assert "ndode.api" not in graph[name], name
        assert "ndode" not in graph[name], f"{name} imports the package top (everything above it)"
    # the engine's bottom layer knows nothing of the solver, the adjoints or events
    for name in (m for m in graph if m.startswith("ndode.ode")):
        above = {"ndode.solver", "ndode.adjoint", "ndode.checkpoint_adjoint", "ndode.event"}
        assert not graph[name] & above, (name, graph[name] & above)


def test_only_the_registry_knows_scipy_solver():
    # every method is an entry of ndode.ode.methods.REGISTRY; nothing else asks "is this scipy?"
    for path in sorted(PKG.rglob("*.py")):
        if path.name in ("scipy_solver.py", "methods.py"):
            continue
        names = {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
        assert not names & {"SCIPY_METHOD", "ScipyIntegrator", "ScipyMethod"}, path


# the layers above the solver: ndode.io (files) and ndode.wandb_mirror (W&B) at the bottom, then data, the harness
# and the report side by side; scripts/ and experiments/ combine them
BOTTOM = {"ndode.io": set(), "ndode.wandb_auth": set(), "ndode.wandb_mirror": {"ndode.wandb_auth"}}


SIDE_BY_SIDE = ("ndode.data", "ndode.harness", "ndode.report")  # none of the three imports another


def layer_violations(graph: dict) -> list[str]:
    """Edges of ``graph`` that break the layering above: bottom modules importing more of ndode, or one of
    data, harness and report importing another."""
    out = [f"{name} imports {sorted(graph[name] - allowed)}" for name, allowed in BOTTOM.items()
           if name in graph and not graph[name] <= allowed]

    def layer(m: str) -> str | None:
        return next((x for x in SIDE_BY_SIDE if m == x or m.startswith(x + ".")), None)

    for name, edges in graph.items():
        here = layer(name)
        out += [f"{name} imports {e}" for e in sorted(edges) if here and layer(e) not in (None, here)]
    return out


def test_io_and_wandb_mirror_at_the_bottom_data_harness_report_side_by_side():
    assert layer_violations(import_graph()) == []


def test_the_layer_check_sees_a_lazy_harness_import():
    graph = import_graph()
    # lazy imports count (ndode.report.dashboard imports the mirror inside publish_summary)
    assert "ndode.wandb_mirror" in graph["ndode.report.dashboard"]
    assert "ndode.io" in graph["ndode.report.figures"] and "ndode.io" in graph["ndode.data._provision"]
    bad = {**graph, "ndode.report.figures": graph["ndode.report.figures"] | {"ndode.harness.record"},
           "ndode.io": {"ndode.harness"}}
    assert layer_violations(bad) == ["ndode.io imports ['ndode.harness']",
                                     "ndode.report.figures imports ndode.harness.record"]

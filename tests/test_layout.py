"""The package's shape: layers that import only downward, no import cycles (function-level imports
included in both), and the heavy scale-out libraries imported only by biasamp/backends."""

import ast
from pathlib import Path

PKG = Path(__file__).parents[1] / "biasamp"


def _imports() -> dict[str, set[str]]:
    """module -> what it imports. `from pkg import sub` of a submodule depends on pkg.sub (Python runs
    pkg/__init__ for any of its submodules anyway), `from pkg import name` on pkg."""
    graph = {}
    submodules = {".".join(p.relative_to(PKG.parent).with_suffix("").parts) for p in PKG.rglob("*.py")}
    for path in PKG.rglob("*.py"):
        name = ".".join(path.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                named = {f"{node.module}.{a.name}" for a in node.names}
                found |= named if named <= submodules else named | {node.module}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = found
    return graph


def test_no_import_cycles():
    graph = _imports()
    modules = set(graph)
    edges = {m: {d for d in deps if d in modules and d != m} for m, deps in graph.items()}
    state, cycle = {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(edges[m]):
            if state.get(d) == "open":
                cycle.append(path[path.index(d) :] + [d] if d in path else path + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    assert not cycle, " -> ".join(cycle[0])


def test_only_backends_import_ray_deepspeed_and_vllm():
    for module, deps in _imports().items():
        heavy = {d.split(".")[0] for d in deps} & {"ray", "deepspeed", "vllm"}
        assert not heavy or module.startswith("biasamp.backends."), f"{module} imports {heavy}"


# Lowest first. A module may import its own layer and the layers before it, never a later one.
LAYERS = [
    (
        "foundation",
        (
            "biasamp.files",
            "biasamp.config",
            "biasamp.tables",
            "biasamp.text",
            "biasamp.artifacts",
            "biasamp.corpus",
            "biasamp.models",
            "biasamp.tracking",
        ),
    ),
    ("instruments", ("biasamp.instruments",)),
    ("stages", ("biasamp.stages", "biasamp.simulate")),  # the pure pipeline; backends are registered into it
    ("application", ("biasamp.study", "biasamp.preflight", "biasamp.progress")),
    ("backends", ("biasamp.backends",)),
    ("cli", ("biasamp.cli",)),
]


def _layer(module: str) -> int | None:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def test_every_module_has_a_layer():
    assert [m for m in _imports() if m != "biasamp" and _layer(m) is None] == []


def test_imports_go_down_the_layers():
    upward = []
    for module, deps in _imports().items():
        for dep in deps:
            if dep.startswith("biasamp.") and _layer(dep) is not None and _layer(dep) > _layer(module):
                upward.append(f"{module} ({LAYERS[_layer(module)][0]}) imports {dep} ({LAYERS[_layer(dep)][0]})")
    assert not upward, "\n".join(sorted(set(upward)))


def test_the_layer_test_sees_a_function_level_import(tmp_path, monkeypatch):
    """The check reads imports inside functions too: an upward one there is found."""
    fake = tmp_path / "biasamp"
    (fake / "stages").mkdir(parents=True)
    (fake / "stages" / "x.py").write_text("def f():\n    from biasamp.backends.ray_cluster import run\n")
    monkeypatch.setattr(__import__(__name__), "PKG", fake)
    assert "biasamp.backends.ray_cluster" in _imports()["biasamp.stages.x"]


MAX_COMMAND_LINES = 20  # parse -> call biasamp.study -> print; orchestration belongs to the application layer


def test_cli_commands_are_thin():
    """Every `biasamp` command body (docstring aside) is at most MAX_COMMAND_LINES lines."""
    tree = ast.parse((PKG / "cli.py").read_text())
    commands = [
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef)
        and any(isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "command" for d in n.decorator_list)
    ]
    assert len(commands) >= 10
    long = {}
    for n in commands:
        first = (
            n.body[1] if isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant) else n.body[0]
        )
        if n.end_lineno - first.lineno + 1 > MAX_COMMAND_LINES:
            long[n.name] = n.end_lineno - first.lineno + 1
    assert not long, long

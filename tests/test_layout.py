"""The package's shape: no import cycles (function-level imports included), and the heavy
scale-out libraries imported only by biasamp/backends."""

import ast
from pathlib import Path

PKG = Path(__file__).parents[1] / "biasamp"


def _imports() -> dict[str, set[str]]:
    graph = {}
    for path in PKG.rglob("*.py"):
        name = ".".join(path.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
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
                cycle.append(path[path.index(d):] + [d] if d in path else path + [d])
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

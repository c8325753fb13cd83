"""The package's layering, read from its source: each module imports only what sits upstream of
it in the flow (DESIGN.md). Every import statement counts, at module level or inside a function:
a lazy import is still a dependency."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vbugs_ray"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names (absolute names; relative resolved)."""
    tree = ast.parse(path.read_text())
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = {d for d in _imports(path) if d in modules and d != name}
        # importing a.b.c runs a/__init__ and a/b/__init__ too
        deps |= {".".join(d.split(".")[:i]) for d in deps for i in range(2, len(d.split(".")))}
        graph[name] = {d for d in deps if d in modules and d != name and not name.startswith(d + ".")}
    return graph


def _third_party(name: str) -> set[str]:
    path = PACKAGE.parent / (name.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / name.replace(".", "/") / "__init__.py"
    return {d.split(".")[0] for d in _imports(path)}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_walker_sees_lazy_imports_and_cycles():
    """The checks below can fail: a function-level import is an edge, a cycle is found."""
    tree = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(tree) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    imports = _imports(PACKAGE / "caption.py")
    assert "vbugs_ray.raycluster" in imports  # imported inside caption_sets only


def test_no_import_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


@pytest.mark.parametrize("layer, forbidden", [
    ("vbugs_ray.slices", {"ray", "torch", "vbugs_ray.pipeline", "vbugs_ray.report", "vbugs_ray.cli",
                          "vbugs_ray.raycluster", "vbugs_ray.roles", "vbugs_ray.flow", "vbugs_ray.store"}),
    ("vbugs_ray.toyworld", {"vbugs_ray.pipeline", "vbugs_ray.store", "vbugs_ray.cli", "vbugs_ray.roles",
                            "vbugs_ray.flow", "ray"}),
    ("vbugs_ray.spec", {"vbugs_ray.roles", "torch", "ray"}),
    # reading and corrupting images, and the examples' models: no backend, pipeline or Ray
    ("vbugs_ray.datasets", {"ray", "vbugs_ray.roles", "vbugs_ray.pipeline", "vbugs_ray.store", "vbugs_ray.flow",
                            "vbugs_ray.verify", "vbugs_ray.cli", "vbugs_ray.raycluster"}),
    # discovery is statistics on arrays: the run store, models and Ray stay with its callers
    ("vbugs_ray.discover", {"ray", "torch", "pyarrow", "vbugs_ray.store", "vbugs_ray.roles", "vbugs_ray.pipeline",
                            "vbugs_ray.verify", "vbugs_ray.flow", "vbugs_ray.cli", "vbugs_ray.raycluster"}),
    ("vbugs_ray.verify.verdicts", {"ray", "torch", "vbugs_ray.pipeline", "vbugs_ray.store", "vbugs_ray.flow"}),
])
def test_layers_import_nothing_downstream(layer, forbidden):
    graph = _graph()
    for module, deps in graph.items():
        if module != layer and not module.startswith(layer + "."):
            continue
        names = deps | _third_party(module)
        bad = sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))
        assert not bad, f"{module} imports {bad}"


def test_no_module_imports_the_cli():
    importers = sorted(m for m, deps in _graph().items() if "vbugs_ray.cli" in deps)
    assert not importers, f"{importers} import vbugs_ray.cli"


def test_backends_import_no_other_backend():
    """A backend file is its own plug-in: it may use private helpers (``_name.py``) of its role
    and the shared role helpers, never another backend."""
    graph = _graph()
    backends = {m for m in graph if m.startswith("vbugs_ray.roles.") and m.count(".") == 3
                and not m.rsplit(".", 1)[1].startswith("_")}
    assert len(backends) >= 10  # toyworld, diffusers, four classifiers, two embedders, two captioners
    for module in backends:
        others = sorted(graph[module] & backends)
        assert not others, f"{module} imports {others}"

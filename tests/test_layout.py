"""The package's shape: subpackages by concern, imports pointing one way, no circles."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "streamer"
DEPLOY = PACKAGE.parent / "deploy"

# What each part may import (besides itself); the order of the data flow in GUIDE.md §2.
BASE = {"records", "config", "logs", "__init__"}
ALLOWED = {
    "records": set(),
    "logs": set(),
    "config": set(),
    "intake": BASE,
    "learning": BASE,
    "evaluation": BASE | {"learning"},
    "state": BASE | {"intake", "learning", "evaluation"},
    "service": BASE | {"intake", "learning", "evaluation", "state"},
    "cli": BASE | {"intake", "learning", "evaluation", "state", "service", "dev"},
    "__main__": {"cli"},
    "__init__": set(),
    "dev": BASE | {"intake", "learning", "evaluation", "state", "service"},
}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every streamer module `path` imports, at any depth of the file (lazy imports count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "streamer"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "streamer":
                continue
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names} & known
    return found & known


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {m: _imports(p, set(files)) - {m} for m, p in files.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_another_that_imports_it_back():
    graph = _graph()
    # A package's __init__ importing its own modules is not a circle of modules.
    graph = {m: {d for d in ds if not m.startswith(d + ".")} for m, ds in graph.items()}
    assert _cycles(graph) == []


def test_imports_point_one_way_between_the_subpackages():
    wrong = sorted(
        f"{m} -> {d}"
        for m, deps in _graph().items()
        for d in deps
        if _part(d) != _part(m) and _part(d) not in ALLOWED[_part(m)]
    )
    assert wrong == []


def test_the_top_level_shows_the_architecture():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    packages = [e for e in entries if (PACKAGE / e).is_dir()]
    assert set(packages) == {
        "cli",
        "config",
        "dev",
        "intake",
        "learning",
        "evaluation",
        "state",
        "service",
    }
    assert len(entries) - len(packages) <= 8, entries
    for package in packages:
        assert ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))


def test_no_module_is_over_300_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 300}  # fmt: skip
    assert long == {}


def test_the_deploy_generators_import_no_circle():
    scripts = {p.stem: p for p in (DEPLOY / "grafana").glob("*.py")}
    graph = {}
    for name, path in scripts.items():
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        graph[name] = names & set(scripts)
    assert _cycles(graph) == []

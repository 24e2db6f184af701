"""The architecture, checked on the import graph: the engine imports nothing of the service, and no module
imports itself back through others (every import counts, also those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

# The engine (the wheel), the service built on it, the local stack, the benchmark and the tests.
PACKAGES = ("saga", "workers", "api", "tasks", "migrations", "standins", "devstack", "bench", "tests")
MODULES = ("celeryconfig", "service")
# Nothing the engine may import: the service, its stand-ins, the development stack.
NOT_FOR_THE_ENGINE = tuple(name for name in (*PACKAGES, *MODULES) if name != "saga")


def modules() -> dict[str, Path]:
    found = {name: ROOT / f"{name}.py" for name in MODULES}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `name` imports: `from a import b` counts as `a.b` where that is a module, else `a`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import saga.x.y` where only saga.x is ours
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, set(known)) for name, path in known.items()}


def test_the_engine_imports_nothing_of_the_service() -> None:
    edges = graph()
    wrong = sorted(
        f"{module} imports {target}" for module, targets in edges.items() if module.split(".")[0] == "saga"
        for target in targets if target.split(".")[0] in NOT_FOR_THE_ENGINE
    )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    """`from saga import db` is an edge to `saga.db`; `from saga import Sagas` one to the package `saga`."""
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_imports_inside_functions() -> None:
    """The checker itself: a lazy import is an edge too, so it cannot hide a cycle."""
    edges = graph()
    assert "devstack.supervisor" in edges["service"]  # imported inside the `dev` command
    assert "saga.execution" in edges["saga.engine"]

"""Imports run one way: datamodules and backbones at the bottom, methods above them, callbacks above
methods, train.py on top; no import cycle, not even behind a delayed (function-level) import.

Read from the source with ``ast`` (nothing is imported), so the test sees every import statement,
wherever it is written.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = ("datamodules", "lightning_modules", "callbacks")


def layer(module: str) -> int:
    """0: data and the shared bottom helpers; 1: backbones; 2: methods; 3: callbacks; 4: the CLI."""
    if module.startswith("datamodules"):
        return 0
    if module == "lightning_modules.backbones":
        return 1
    if module.startswith("lightning_modules"):
        return 2
    if module.startswith("callbacks"):
        return 3
    if module == "train":
        return 4
    raise ValueError(module)


def project_modules() -> dict[str, Path]:
    found = {"train": REPO / "train.py"}
    for package in PACKAGES:
        for path in sorted((REPO / package).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules that ``module`` imports anywhere in its file (top level or inside functions)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            # `from pkg import mod` names a module; `from mod import name` names the module itself
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    known = project_modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def test_the_graph_is_read():
    """The reader finds imports it must find (else every check below passes vacuously)."""
    graph = import_graph()
    assert "lightning_modules.backbones" in graph["lightning_modules.classifier"] or any(
        "lightning_modules.backbones" in deps for deps in graph.values())
    assert "datamodules.noise" in graph["datamodules.noisy_cifar"] or any(
        m.startswith("datamodules.") for m in graph["datamodules.noisy_cifar"])
    assert any(m.startswith("callbacks") for m in graph["train"])


def test_imports_never_go_up_a_layer():
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in import_graph().items() for d in sorted(deps) if layer(d) > layer(m)]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    # a package's __init__ re-exporting its modules is not a cycle of logic: leave it out
    graph = {m: {d for d in deps if d not in PACKAGES} for m, deps in import_graph().items() if m not in PACKAGES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(set(project_modules()) - {"callbacks"} - {
    m for m in project_modules() if m.startswith("callbacks.")}))
def test_callbacks_live_in_callbacks(module):
    """A Lightning callback is defined in callbacks/, where users look for it."""
    tree = ast.parse(project_modules()[module].read_text())
    defined = [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
               and any((ast.unparse(b).endswith("Callback")) for b in node.bases)]
    assert not defined, f"{module} defines the callback(s) {defined}: move them to callbacks/"

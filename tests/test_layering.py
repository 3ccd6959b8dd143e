"""The package's layers, enforced from the code's own imports (issue 12).

Layers, bottom to top: `core` (the audit engine: no Hydra, OmegaConf, pydantic or matplotlib),
`persist` (our crash-safe files beside the state), `ops` (operator commands and metrics, no Hydra
either), `pipeline` (config, validation, the runner), `studies` (fault scenarios, study, sweep),
and on top the entry points (`app`, `__main__` and the short `python -m` aliases). A module may
import its own layer and the layers below it, never one above; and no module imports itself
back through others (no import circles), lazy imports included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "distfs_pipeline"
LAYERS = ("core", "persist", "ops", "pipeline", "studies")
ENTRY = "entry"  # modules directly in the package: above every layer
FORBIDDEN_BELOW_PIPELINE = ("hydra", "omegaconf", "pydantic", "matplotlib")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in LAYERS else ENTRY


def _rank(layer: str) -> int:
    return LAYERS.index(layer) if layer in LAYERS else len(LAYERS)


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ours and every third-party top-level name `module` imports, anywhere in it."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _ours(imported: set[str], known: set[str]) -> set[str]:
    return {name for name in imported if name in known and name != "distfs_pipeline"}


def test_every_module_sits_in_a_layer_or_is_an_entry_point(graph: dict[str, set[str]]) -> None:
    entry = {name for name in graph if _layer(name) == ENTRY}
    assert entry == {
        "distfs_pipeline",
        "distfs_pipeline.__main__",
        "distfs_pipeline.app",
        "distfs_pipeline.adopt",
        "distfs_pipeline.schemas",
        "distfs_pipeline.status",
        "distfs_pipeline.sweep",
    }


def test_no_module_imports_a_layer_above_its_own(graph: dict[str, set[str]]) -> None:
    known = set(graph)
    upward = [
        f"{name} ({_layer(name)}) imports {dep} ({_layer(dep)})"
        for name, deps in graph.items()
        for dep in _ours(deps, known)
        if _rank(_layer(dep)) > _rank(_layer(name))
    ]
    assert upward == []


@pytest.mark.parametrize("layer", ["core", "persist", "ops"])
def test_lower_layers_import_no_hydra_omegaconf_pydantic_or_matplotlib(
    graph: dict[str, set[str]], layer: str
) -> None:
    offending = sorted(
        f"{name} imports {dep}"
        for name, deps in graph.items()
        if _layer(name) == layer
        for dep in deps
        if dep.split(".")[0] in FORBIDDEN_BELOW_PIPELINE
    )
    assert offending == []


def test_no_import_circles(graph: dict[str, set[str]]) -> None:
    known = set(graph)
    edges = {name: _ours(deps, known) - {name} for name, deps in graph.items()}
    # A package's __init__ is imported with any of its modules: not an edge of the design.
    edges = {name: {d for d in deps if not name.startswith(d + ".")} for name, deps in edges.items()}
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                circles.append([*trail[trail.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert circles == []


def test_the_test_sees_real_edges(graph: dict[str, set[str]]) -> None:
    """The checks above can fail: the graph holds known edges of each kind."""
    assert "distfs_pipeline.core.store" in graph["distfs_pipeline.core.chunks"]
    assert "hydra" in {d.split(".")[0] for d in graph["distfs_pipeline.app"]}
    assert "distfs_pipeline.persist.state" in graph["distfs_pipeline.ops.status"]

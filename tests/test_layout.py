"""The tree is the architecture: every import of app/ and ml/ goes down the layers, never in a loop.

Read from the source with `ast` (every import statement, also those inside functions), so a
late import cannot hide a loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lowest first: a module may import its own layer and the ones before it, never a later one.
LAYERS = [
    ["ml"],
    ["app.settings", "app.errors"],
    ["app.store"],
    ["app.ops"],
    ["app.serving", "app.worker"],
    ["app.api"],
    ["app.cli"],
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for package in ("app", "ml") for p in (ROOT / package).rglob("*.py")}
del MODULES["app"]  # the package's empty __init__: no layer of its own


def _imports(path: Path) -> set[str]:
    """The project modules `path` imports (a `from X import name` counts X.name when it is one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _layer(module: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py")


def _reaches(start: str, goal: str) -> list[str] | None:
    """An import path from start to goal, if there is one."""
    stack, seen = [[start]], {start}
    while stack:
        path = stack.pop()
        for nxt in GRAPH[path[-1]]:
            if nxt == goal:
                return [*path, nxt]
            if nxt not in seen:
                seen.add(nxt)
                stack.append([*path, nxt])
    return None


def test_the_layers_cover_every_module() -> None:
    assert len(MODULES) > 40
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_one_that_imports_it_back(module: str) -> None:
    for imported in GRAPH[module]:
        loop = _reaches(imported, module)
        assert loop is None, " -> ".join([module, *loop])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module: str) -> None:
    upward = sorted(i for i in GRAPH[module] if _layer(i) > _layer(module))
    assert not upward, f"{module} (layer {_layer(module)}) imports {upward} from a higher layer"


def test_ml_never_imports_app() -> None:
    offenders = sorted(
        m for m in MODULES if m.startswith("ml") and any(i.startswith("app") for i in GRAPH[m])
    )
    assert offenders == []


def test_routes_live_only_in_the_api_package() -> None:
    decorators = ("@router.", "@app.get", "@app.post", "@app.put", "@app.delete")
    outside = [
        str(path.relative_to(ROOT))
        for name, path in MODULES.items()
        if not name.startswith("app.api.") and any(d in path.read_text() for d in decorators)
    ]
    assert outside == []

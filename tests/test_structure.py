"""The package's shape, read from its source with `ast` (every import, also those inside functions):
layers import only themselves and the layers below, no import cycle, entry modules imported by nobody,
no module over 400 lines, and every subpackage shipped by pyproject.toml."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sslpath"
# Lowest first: a layer imports only itself and the layers before it.
LAYERS = ("core", "data", "models", "results", "checks", "reporting", "evaluation", "training")
# The commands (`python -m sslpath.X`, the console scripts): argument parsing and error handling only.
ENTRY_MODULES = {f"sslpath.{name}" for name in ("train", "evaluate", "predict", "report", "robustness_report", "prepare")}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "conf" not in p.relative_to(PACKAGE).parts}


def imports(path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported sslpath module, line, inside a function) for every import in the file: `from pkg import mod`
    names the module mod when it is one, else pkg."""
    tree = ast.parse(path.read_text(), str(path))
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names]
        else:
            continue
        found += [(name, node.lineno, id(node) in inside) for name in names if name.split(".")[0] == "sslpath"]
    return found


@cache
def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: {target for target, _, _ in imports(path, known)} - {name} for name, path in modules().items()}


def layer(module: str) -> int | None:
    """The layer index of a module in a layer's subpackage; None for sslpath itself and the entry modules."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_is_in_a_layer_or_is_an_entry_module():
    loose = [m for m in modules() if layer(m) is None and m not in ENTRY_MODULES | {"sslpath"}]
    assert loose == [], f"modules outside the layers {LAYERS}: {loose}"


def test_layers_import_only_themselves_and_the_layers_below():
    wrong = []
    for module, targets in graph().items():
        own = layer(module)
        if module == "sslpath":
            own = 0  # the package itself sets up the environment from core only
        if own is None:
            continue  # an entry module may import any layer
        wrong += [f"{module} -> {t}" for t in targets if layer(t) is None or layer(t) > own]
    assert wrong == [], f"imports against the layer order {' < '.join(LAYERS)}: {wrong}"


def test_no_import_cycle():
    """Tarjan's strongly connected components: any with two or more modules is a cycle."""
    edges, index, low, stack, on_stack, cycles = graph(), {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert cycles == []


@pytest.mark.parametrize("where", ["sslpath", "tests", "scripts"])
def test_nobody_imports_an_entry_module(where):
    """Tests run the commands as users do (conftest.run_main, run_cli) and call the layers' functions."""
    known = set(modules())
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in sorted((ROOT / where).rglob("*.py"))
        for target, line, _ in imports(path, known)
        if target in ENTRY_MODULES and module_name(path) != target
    ]
    assert offenders == []


def test_only_entry_modules_import_sslpath_inside_functions():
    """Lazy imports keep a command's `--help` fast; anywhere else an import inside a function hides a
    dependency (and a cycle) from the reader and from this test's layer check."""
    known = set(modules())
    hidden = [
        f"{name}:{line} imports {target}"
        for name, path in modules().items()
        if name not in ENTRY_MODULES
        for target, line, in_function in imports(path, known)
        if in_function
    ]
    assert hidden == []


def test_no_module_over_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_pyproject_ships_every_subpackage():
    """setuptools' explicit package list: a subpackage missing from it is missing from the wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {module_name(p) for p in PACKAGE.rglob("__init__.py") if "conf" not in p.relative_to(PACKAGE).parts}
    assert packages <= listed, sorted(packages - listed)


def test_the_checks_see_a_violation(tmp_path):
    """The parser finds an import hidden in a function, and names a submodule imported with `from`."""
    source = tmp_path / "m.py"
    source.write_text("from sslpath.models import registry\ndef f():\n    import sslpath.train\n")
    assert imports(source, {"sslpath.models.registry", "sslpath.train"}) == [
        ("sslpath.models.registry", 1, False),
        ("sslpath.train", 3, True),
    ]


def test_test_modules_share_helpers_through_factories_only():
    """Shared test helpers live in tests/factories.py (fixtures in conftest.py): a test module importing
    another test module runs that module's module-scoped fixtures twice and ties their edits together."""
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.startswith(("test_", "conftest"))], f"{path.name} imports {names}"

"""The package's shape, checked from its source with the standard library's ``ast``.

Each module owns one thing: paths are resolved in :mod:`cadstore.io.location`, bytes are
published in :mod:`cadstore.io.publish`, progress bars are drawn by :mod:`cadstore.progress`.
These tests keep it so: no import circle (counting the imports made inside functions too),
no private name imported from another module, no production module importing the test
infrastructure, and each of those concerns in its one place.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "cadstore"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(module: str) -> Iterator[tuple[str, list[str], int]]:
    """``(imported module, names, line)`` of every cadstore import executed at run time."""
    tree = ast.parse(MODULES[module].read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if _in_type_checking(node, parents):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cadstore"):
            yield node.module, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cadstore"):
                    yield alias.name, [], node.lineno


def _targets(module: str) -> set[str]:
    """The cadstore modules ``module`` imports (a name that is a submodule counts as one)."""
    found = set()
    for imported, names, _ in _imports(module):
        subs = [f"{imported}.{n}" for n in names if f"{imported}.{n}" in MODULES]
        found.update(subs or [imported])
        if len(subs) < len(names):
            found.add(imported)
    found.discard(module)
    return found & set(MODULES)


def _cycles() -> list[list[str]]:
    graph = {m: _targets(m) for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_the_checker_sees_the_package() -> None:
    assert "cadstore.io.location" in MODULES and "cadstore.merging.run" in MODULES
    assert "cadstore.io.location" in _targets("cadstore.merging.run")


def test_no_import_circle() -> None:
    # Parents importing their own submodules (a package __init__ re-exporting) are not
    # circles that matter; everything else is.
    cycles = [c for c in _cycles() if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert cycles == []


def test_no_private_name_crosses_modules() -> None:
    crossing = [
        f"{module}:{line} imports {name} from {imported}"
        for module in MODULES
        for imported, names, line in _imports(module)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert crossing == []


def test_production_code_never_imports_the_test_infrastructure() -> None:
    offenders = [
        f"{module}:{line}"
        for module in MODULES
        if not module.startswith("cadstore.testing")
        for imported, _, line in _imports(module)
        if imported.startswith("cadstore.testing")
    ]
    assert offenders == []


def _calls(module: str, name: str) -> list[int]:
    """Lines where ``module`` calls ``name`` (``"os.fsync"``, or a bare function name)."""
    tree = ast.parse(MODULES[module].read_text())
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = ast.unparse(node.func)
            if called == name or ("." not in name and called.endswith("." + name)):
                lines.append(node.lineno)
    return lines


def _imported_by(module: str, name: str) -> bool:
    tree = ast.parse(MODULES[module].read_text())
    return any(
        (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == name)
        or (isinstance(n, ast.Import) and any(a.name.split(".")[0] == name for a in n.names))
        for n in ast.walk(tree)
    )


@pytest.mark.parametrize(
    ("call", "owners"),
    [
        # Whether a path is a URL is decided when it is resolved, nowhere else.
        ("is_url", {"cadstore.io.location", "cadstore.io.filesystems"}),
        # Durability is publication's business.
        ("os.fsync", {"cadstore.io.publish"}),
        ("fsync_dir", {"cadstore.io.publish"}),
        # Files appear by rename only where they are published.
        ("os.replace", {"cadstore.io.publish"}),
        ("os.rename", {"cadstore.io.publish"}),
    ],
)
def test_each_concern_has_one_owner(call: str, owners: set[str]) -> None:
    users = {module for module in MODULES if _calls(module, call)}
    assert users <= owners, f"{call}() called outside {sorted(owners)}: {sorted(users - owners)}"
    assert users, f"{call}() is not called at all: the check checks nothing"


def test_progress_bars_have_one_owner() -> None:
    assert {m for m in MODULES if _imported_by(m, "tqdm")} == {"cadstore.progress"}


def test_the_owners_define_their_helpers_once() -> None:
    definitions = [
        (module, node.name)
        for module, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") in ("fsync_dir", "progress")
    ]
    assert sorted(definitions) == [
        ("cadstore.io.publish", "fsync_dir"),
        ("cadstore.progress", "progress"),
    ]


def _requirement_name(requirement: str) -> str:
    import re

    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()


def test_dependencies_are_listed_once_and_the_core_stays_small() -> None:
    import tomllib

    project = tomllib.loads((SRC.parent / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    # What the core imports (google-crc32c: the checksum on every merged chunk); numcodecs
    # and msgpack serve only other tools' Zarr v2 files.
    assert core == {"numpy", "zstandard", "google-crc32c"}
    owners: dict[str, set[str]] = {}
    for extra, requirements in project["optional-dependencies"].items():
        for requirement in requirements:
            name = _requirement_name(requirement)
            if name != "cadstore":
                owners.setdefault(name, set()).add(extra)
    assert {name: extras for name, extras in owners.items() if len(extras) > 1} == {}
    assert not core & set(owners)
    assert owners["numcodecs"] == owners["msgpack"] == {"zarr2"}
    # torch is a floor, so a machine with its own build (the CPU one) keeps it.
    assert project["optional-dependencies"]["torch"] == ["torch>=2.1"]

"""The package stays readable: no module in rotation/ over 450 lines, no import cycle in rotation/ or azsim/."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
MAX_LINES = 450

# Modules allowed over MAX_LINES, each with its reason. An entry that is no longer needed fails the test, so
# the list only ever shrinks.
LONG_MODULES: dict[str, str] = {}
# Import cycles allowed, each with its reason; same rule.
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def _modules(package: str) -> dict[str, Path]:
    """Dotted name -> file, for every module of ``package`` (a package is named by its ``__init__``)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(node: ast.Import | ast.ImportFrom, module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` one import statement loads (``from pkg import sub`` loads ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([base] if base else [])])
        submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
        names = submodules if len(submodules) == len(node.names) else [base, *submodules]
    targets = set()
    for name in names:
        found = name
        while found and found not in known:
            found = found.rpartition(".")[0]
        if found and found != module:
            targets.add(found)
    return targets


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports: at the top, in functions, under TYPE_CHECKING."""
    known = _modules(package)
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name] |= _imported(node, name, path, known)
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The groups of modules that import each other, directly or through others (each group once)."""
    reach = {node: _reachable(graph, node) for node in graph}
    groups = {
        frozenset({node, *(other for other in reach[node] if node in reach[other])})
        for node in graph
        if node in reach[node]
    }
    return sorted(groups, key=sorted)


def test_no_module_in_rotation_is_over_450_lines():
    """Every module under rotation/ fits in one sitting, except the listed ones, each with its reason."""
    lengths = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in _modules("rotation").values()
    }
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES and name not in LONG_MODULES}
    assert too_long == {}
    no_longer = [name for name in LONG_MODULES if lengths.get(name, 0) <= MAX_LINES]
    assert no_longer == [], "remove these from LONG_MODULES: they are gone or short enough now"


@pytest.mark.parametrize("package", ["rotation", "azsim"])
def test_no_import_cycle(package):
    """No two modules of the package import each other, even lazily or only for type checking."""
    found = cycles(import_graph(package))
    assert sorted(sorted(c) for c in found if c not in KNOWN_CYCLES) == []
    stale = [sorted(c) for c in KNOWN_CYCLES if min(c).split(".")[0] == package and c not in found]
    assert stale == [], "remove these from KNOWN_CYCLES: the cycle is gone"


def test_cycle_finder_sees_lazy_and_type_checking_imports(tmp_path, monkeypatch):
    """The graph counts imports inside functions and under TYPE_CHECKING, and `from pkg import sub` edges."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n"
    )
    (package / "b.py").write_text("def f():\n    from pkg import c\n")
    (package / "c.py").write_text("from . import a\n")
    (package / "d.py").write_text("import pkg.a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    graph = import_graph("pkg")
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.c"},
        "pkg.c": {"pkg.a"},
        "pkg.d": {"pkg.a"},
    }
    assert cycles(graph) == [frozenset({"pkg.a", "pkg.b", "pkg.c"})]


def _package_map(doc: str) -> dict[str, set[str]]:
    """The "The package:" section of a docstring: subpackage ("core" for the top level) -> the words listed."""
    entries: dict[str, set[str]] = {}
    current = None
    for line in doc.partition("The package:")[2].splitlines():
        words = line
        if line.startswith("    ") and not line.startswith("     "):
            head, _, words = line.strip().partition(" ")
            current = entries.setdefault(head.rstrip("/"), set())
        elif not line.startswith("     "):
            current = None
        if current is not None:
            current.update(words.replace(",", " ").replace("(", " ").replace(")", " ").split())
    return entries


def test_the_package_docstring_maps_every_module():
    """rotation/__init__.py's map names every module of the package under its subpackage."""
    import rotation

    listed = _package_map(rotation.__doc__ or "")
    missing = []
    for name in _modules("rotation"):
        parts = name.split(".")[1:]
        if not parts or parts[-1] == "__main__" or (len(parts) == 1 and parts[0] in listed):
            continue
        sub = parts[0] if len(parts) > 1 else "core"
        if parts[-1] not in listed.get(sub, set()):
            missing.append(name)
    assert listed
    assert not missing, missing

"""The shape of ``postformer.scaling``: four rooms in the order data flows (spec, run, fit,
report) plus ``cli.py`` and ``numbers.py``; no import circle between its modules (imports
inside functions counted), no module taking another room's private names, and no import
inside a function but of a heavy optional dependency, with a comment saying so.

The graph is read from the source (``ast``), so the check needs no import of the package."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "scaling"
PACKAGE = "postformer.scaling"
ROOMS = ("spec", "run", "fit", "report")
#: what a function may import: dependencies too heavy to load for every command, each with a
#: comment on its line saying why it is imported there
LAZY_OK = ("matplotlib", "submitit", "lm_eval")


@dataclass
class Module:
    name: str  # dotted
    path: Path
    is_package: bool
    imports: list[tuple[str, list[str], int, bool]] = field(default_factory=list)
    # (target module, names taken from it, line, inside a function or class)
    attributes: list[tuple[str, str, int]] = field(default_factory=list)
    # (module bound to a local name, attribute read on it, line)


def _modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Module]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join([package, *parts])
        out[name] = Module(name, path, is_package)
    return out


def _resolve(mod: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.name.split(".")
    if not mod.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _visit(node: ast.AST, nested: bool, mod: Module, mods: dict[str, Module],
           bound: dict[str, str]) -> None:
    """Record ``mod``'s imports under ``node`` (``nested``: inside a function or class) and the
    attributes read on names bound to scaling modules (``bound``: local name -> module)."""
    for child in ast.iter_child_nodes(node):
        inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef
                                     | ast.ClassDef | ast.Lambda)
        if isinstance(child, ast.Import):
            for alias in child.names:
                mod.imports.append((alias.name, [], child.lineno, nested))
                if alias.name in mods:
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(child, ast.ImportFrom):
            target = _resolve(mod, child)
            mod.imports.append((target, [a.name for a in child.names], child.lineno, nested))
            for alias in child.names:  # `from . import runner`: a module by name
                sub = f"{target}.{alias.name}"
                if sub in mods:
                    mod.imports.append((sub, [], child.lineno, nested))
                    bound[alias.asname or alias.name] = sub
        elif isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name):
            if child.value.id in bound:
                mod.attributes.append((bound[child.value.id], child.attr, child.lineno))
        _visit(child, inner, mod, mods, bound)


def _read(mods: dict[str, Module]) -> None:
    for mod in mods.values():
        tree = ast.parse(mod.path.read_text(), filename=str(mod.path))
        _visit(tree, False, mod, mods, {})


def _room(name: str) -> str:
    parts = name.split(".")
    return parts[2] if len(parts) > 3 or (len(parts) == 3 and parts[2] in ROOMS) else "hall"


def _edges(mods: dict[str, Module]) -> dict[str, set[str]]:
    """module -> the scaling modules importing it executes: the target and every package on
    the way to it that is not one of the importer's own (those are running already)."""
    edges: dict[str, set[str]] = {name: set() for name in mods}
    for mod in mods.values():
        own = {".".join(mod.name.split(".")[:i]) for i in range(1, mod.name.count(".") + 2)}
        for target, _, _, _ in mod.imports:
            if not target.startswith(PACKAGE):
                continue
            parts = target.split(".")
            for i in range(3, len(parts) + 1):
                step = ".".join(parts[:i])
                if step in mods and step not in own and step != mod.name:
                    edges[mod.name].add(step)
    return edges


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


@pytest.fixture(scope="module")
def mods() -> dict[str, Module]:
    found = _modules()
    _read(found)
    return found


def test_the_rooms_are_there(mods):
    rooms = {_room(name) for name in mods}
    assert rooms == {*ROOMS, "hall"}
    for room in ROOMS:
        init = mods[f"{PACKAGE}.{room}"]
        assert ast.get_docstring(ast.parse(init.path.read_text())), f"{room}/__init__.py: a docstring"
    hall = sorted(name for name in mods if _room(name) == "hall")
    assert hall == [PACKAGE, f"{PACKAGE}.cli", f"{PACKAGE}.numbers"]


def test_no_import_circle(mods):
    circles = _circles(_edges(mods))
    assert not circles, f"modules that import each other (function-level imports counted): {circles}"


def test_no_private_name_crosses_a_room(mods):
    bad = []
    for mod in mods.values():
        for target, names, line, _ in mod.imports:
            if target.startswith(PACKAGE) and _room(target) != _room(mod.name):
                bad += [f"{mod.path.name}:{line} takes {n} from {target}" for n in names
                        if n.startswith("_")]
        for target, attr, line in mod.attributes:
            if _room(target) != _room(mod.name) and attr.startswith("_") and not attr.startswith("__"):
                bad.append(f"{mod.path.name}:{line} reads {target}.{attr}")
    assert not bad, "private names of another room:\n" + "\n".join(bad)


def test_imports_inside_functions_are_heavy_optional_ones_with_a_comment(mods):
    bad = []
    for mod in mods.values():
        lines = mod.path.read_text().splitlines()
        for target, _, line, nested in mod.imports:
            if not nested:
                continue
            top = target.split(".")[0]
            if top not in LAZY_OK or "#" not in lines[line - 1]:
                bad.append(f"{mod.path.relative_to(ROOT)}:{line} imports {target} inside a function")
    assert not bad, "\n".join(bad)


# ---- the checker checks: each rule fails on a package that breaks it -----------------------


def _fake(tmp_path: Path, files: dict[str, str]) -> dict[str, Module]:
    for rel, text in files.items():
        path = tmp_path / "scaling" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    found = _modules(tmp_path / "scaling")
    _read(found)
    return found


def test_the_checks_catch_what_they_forbid(tmp_path):
    found = _fake(tmp_path, {
        "__init__.py": "",
        "spec/__init__.py": '"""spec"""\n',
        "spec/study.py": "def f():\n    from ..run.plan import _steps\n",
        "run/__init__.py": '"""run"""\n',
        "run/plan.py": "from ..spec import study\n\n\ndef g():\n    import torch\n    study._cache\n",
    })
    assert _circles(_edges(found)) == [[f"{PACKAGE}.run.plan", f"{PACKAGE}.spec.study"]]
    study = found[f"{PACKAGE}.spec.study"]
    assert (f"{PACKAGE}.run.plan", ["_steps"], 2, True) in study.imports
    plan = found[f"{PACKAGE}.run.plan"]
    assert (f"{PACKAGE}.spec.study", "_cache", 6) in plan.attributes
    assert ("torch", [], 5, True) in plan.imports

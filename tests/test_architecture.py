"""The architecture's rules (docs/architecture.md), checked on the source: arrows one way, one
place for each MLflow name, no hand-kept lists of registered names."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from distill_core import DATASETS, METHODS
from tracking import schema

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("distill_core", "tracking", "studies", "analysis", "search_spaces", "benchmarks")
#: What each package may import (the arrows of docs/architecture.md).
ALLOWED = {
    "distill_core": set(),
    "tracking": {"distill_core"},
    "search_spaces": {"distill_core"},
    "analysis": {"distill_core", "tracking"},
    "studies": {"distill_core", "tracking", "search_spaces", "analysis"},
    "benchmarks": {"distill_core", "tracking", "studies", "search_spaces", "analysis"},
}


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child
            stack.append(child)


def graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from a import b`` is an edge to ``a.b`` when
    that is a module, else to ``a``)."""
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in known}
            elif node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in known else node.module)
        edges[name] = {t for t in targets if t in known and t != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_modules() -> None:
    assert cycles(graph()) == []


def test_packages_import_one_way() -> None:
    wrong = sorted(
        (source, target)
        for source, targets in graph().items()
        for target in targets
        if (a := source.split(".")[0]) != (b := target.split(".")[0]) and b not in ALLOWED[a]
    )
    assert wrong == []


def _strings(path: Path) -> Iterator[tuple[int, str]]:
    """String literals but docstrings, f-string text, and dict keys and lookups (``m["crashed"]``,
    ``m.get("crashed")``: a metric named like a status is a key, not the status)."""
    tree = ast.parse(path.read_text())
    keys = {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
    keys |= {id(k) for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys if k}
    keys |= {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    keys |= {  # a metric named like a status, spelled once: CRASHED_METRIC = "crashed"
        id(n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign)
        and all(isinstance(t, ast.Name) and t.id.endswith("_METRIC") for t in n.targets)
    }
    keys |= {
        id(n.args[0])
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "get"
        and n.args
    }
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            key = id(node) in keys and not node.value.startswith("distill.")
            if id(node) not in docstrings and not key:
                yield node.lineno, node.value


def test_mlflow_names_are_spelled_only_in_the_schema() -> None:
    """Tag names and statuses appear as string literals in tracking/schema.py only. (Tags named by
    plain words, ``seed``, ``status``, ..., and roles, ``study``, ``trial``, ``final``, are words
    of ordinary code too: they are left out.)"""
    names = {v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str)}
    names |= {str(v) for v in [*schema.Status, *schema.StudyStatus]}
    names -= {"seed", "method", "space", "kind", "status"}
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for package in ("studies", "analysis", "tracking", "benchmarks")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "tracking" / "schema.py"
        for line, text in _strings(path)
        if text in names or text.startswith("distill.")
    ]
    assert found == []


def _compared_strings(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                for item in (
                    side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
                ):
                    if isinstance(item, ast.Constant) and isinstance(item.value, str):
                        yield node.lineno, item.value


def test_method_names_are_compared_only_in_their_own_module() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for package in ("distill_core", "studies", "analysis", "tracking")
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, text in _compared_strings(path)
        if text in METHODS and path.stem != text
    ]
    assert found == []


def test_dataset_names_are_listed_only_by_the_registry() -> None:
    """No literal list of two or more data set names outside the registry (distill_core/data.py)."""
    found = []
    for package in ("distill_core", "studies", "analysis", "tracking"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "distill_core" / "data.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.List | ast.Tuple | ast.Set):
                    names = [
                        e.value
                        for e in node.elts
                        if isinstance(e, ast.Constant) and e.value in DATASETS
                    ]
                    if len(names) >= 2:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {names}")
    assert found == []


@pytest.mark.parametrize("module", ["studies/trial.py", "studies/runner.py"])
def test_lockstep_seeds_use_no_threads(module: str) -> None:
    imported = {
        alias.name
        for node in _imports(ast.parse((ROOT / module).read_text()))
        for alias in node.names
    } | {
        node.module
        for node in _imports(ast.parse((ROOT / module).read_text()))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not {"threading", "queue", "concurrent.futures"} & imported

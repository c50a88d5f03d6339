"""distill_core's modules import each other without cycles, and importing it changes nothing else."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "distill_core"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(tree: ast.AST, modules: set[str]) -> set[str]:
    """distill_core modules an import statement anywhere in ``tree`` names (not under TYPE_CHECKING)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: imported(ast.parse(p.read_text()), modules) for name, p in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each node that lies on one (depth-first search)."""
    found, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif state[nxt] == 0:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            visit(node)
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x.y\nelse:\n    import x.z\n"
        "def f():\n    from x import y\n"
    )
    assert imported(tree, {"x", "x.y", "x.z"}) == {"x.y", "x.z"}


def test_distill_core_has_no_import_cycle() -> None:
    graph = import_graph()
    assert {"distill_core.config", "distill_core.trainer", "distill_core.methods.kd"} <= set(graph)
    assert cycles(graph) == []


def test_the_config_schema_imports_no_registry() -> None:
    assert import_graph()["distill_core.config"] == {"distill_core.errors"}


FRESH = """
import json, logging, os, sys, warnings
import filelock, numpy, pydantic, torch, torchvision, yaml  # what distill_core imports: before the snapshot

def snapshot():
    return {
        "env": dict(os.environ),
        "warnings": [repr(f) for f in warnings.filters],
        "handlers": [repr(h) for h in logging.root.handlers],
        "level": logging.root.level,
        "loggers": sorted(logging.Logger.manager.loggerDict),
        "threads": torch.get_num_threads(),
        "rng": torch.get_rng_state().tolist(),
    }

before = snapshot()
import distill_core
after = snapshot()
changed = [k for k in before if before[k] != after[k]]
result = distill_core.fit(distill_core.make_config({
    "data": {"name": "synthetic"}, "model": {"name": "mlp"},
    "run": {"epochs": 1, "device": "cpu", "teacher_store": sys.argv[1]},
}))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "mlflow", "optuna"))
print(json.dumps({"changed": changed, "heavy": heavy, "status": result.status,
                  "val_acc": result.final["val_acc"]}))
"""


def test_a_fresh_interpreter_trains_without_side_effects_or_study_libraries(
    tmp_path: Path,
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", FRESH, str(tmp_path / "teachers")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["changed"] == []  # importing sets no env var, warning filter, logger or seed
    assert report["heavy"] == []
    assert report["status"] == "completed" and report["val_acc"] > 0.3

"""The package's shape (issue 15): no import circles, no module over about 300 lines, and the
public contracts a restructuring must keep: cell ids of every params file, the CLI's commands."""

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "slotlib"
MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The slotlib modules a file imports anywhere in it (top level or inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("slotlib")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("slotlib"):
                continue
            for alias in node.names:  # `from . import x` imports the module x when there is one
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}   # 1 on the stack, 2 finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circles():
    graph = import_graph()
    assert "slotlib.classify.fit" in graph and "slotlib.runs.folder" in graph["slotlib.classify.fit"]
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_the_two_applications_do_not_import_each_other():
    graph = import_graph()
    for name, deps in graph.items():
        for a, b in (("classify", "discover"), ("discover", "classify")):
            if name.startswith(f"slotlib.{a}"):
                assert not any(d.startswith(f"slotlib.{b}") for d in deps), f"{name} imports {b}: {deps}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_over_300_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_cell_ids_of_every_params_file_are_unchanged(monkeypatch):
    """A grid already run (or half run) must find its cell folders again after any refactoring."""
    from slotlib.config import load_params_file

    monkeypatch.setenv("EUROSAT_ROOT", "/nonexistent")   # data_root is local-only: not in the ids
    golden = json.loads((ROOT / "tests" / "data" / "cell_ids.json").read_text())
    files = sorted(p.name for p in (ROOT / "params").glob("*.yaml"))
    assert set(golden) <= set(files)
    for name, ids in golden.items():
        assert [c.id for c in load_params_file(ROOT / "params" / name).cells()] == ids, name


def test_the_command_line_keeps_its_commands():
    from slotlib.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    assert set(commands) == {"describe", "train", "grid", "status", "report", "explain", "compare", "bench"}

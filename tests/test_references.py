"""No stale reference (issue 31): every repository path and slotlib module a reader is pointed to exists.

Read: the docs (README.md, docs/*.md, notebooks/README.md, benchmarks/*.md), every notebook's markdown
and code, and the docstrings and comments of slotlib/**/*.py and benchmarks/*.py. A reference is, on
purpose narrowly, a path under one of the repository's own folders (``slotlib/runs/grid.py``,
``params/demo.yaml``, ``docs/design.md``...) or a dotted name ``slotlib.x.y`` (a module, or a name a
module defines). Paths under outputs/ or outside the repository (``../shared``), relative ones
(``../notebooks``), and placeholders or globs (``*``, ``<``, ``{``, ``NAME``, ``...``) are not checked.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("slotlib", "notebooks", "params", "benchmarks", "docs", "tests")
PATH = re.compile(r"(?<![\w./~$-])(?:%s)/[^\s`'\"()\[\],;:|]*" % "|".join(FOLDERS))
TOP_DOC = re.compile(r"(?<![\w./~$-])[A-Z][A-Z0-9_]*\.md\b")   # DESIGN.md: at the root or beside the file
MODULE = re.compile(r"(?<![\w./-])slotlib(?:\.\w+)+")
PLACEHOLDER = re.compile(r"[*<{]|NAME|\.\.\.")

# Paths that another branch adds: docs/design.md is the former DESIGN.md, which the docs rewrite
# (branch wt-docs) brings into docs/. Remove the entry once that branch is merged.
ADDED_ELSEWHERE = {"docs/design.md"}

# Stale references waiting for a fix elsewhere: (file, reference). The test fails once one is gone, so
# that the entry is removed with the change that fixes it.
PENDING: set[tuple[str, str]] = set()


def doc_texts() -> dict[str, str]:
    """Relative path -> text a reader reads, for every file checked."""
    texts = {}
    docs = [ROOT / "README.md", ROOT / "notebooks" / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted((ROOT / "benchmarks").glob("*.md"))]
    for path in docs:
        texts[str(path.relative_to(ROOT))] = path.read_text()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        texts[str(path.relative_to(ROOT))] = "\n".join("".join(c["source"]) for c in cells)
    for path in [*sorted((ROOT / "slotlib").rglob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]:
        texts[str(path.relative_to(ROOT))] = docstrings_and_comments(path.read_text())
    return texts


def docstrings_and_comments(source: str) -> str:
    """A Python file's docstrings and comments (its other strings are code, checked by running it)."""
    parts = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            parts.append(ast.get_docstring(node, clean=False) or "")
    parts += [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT]
    return "\n".join(parts)


def references(text: str) -> set[str]:
    found = {m.group(0) for pattern in (PATH, TOP_DOC, MODULE) for m in pattern.finditer(text)}
    return {r.split("#")[0].rstrip(".") for r in found if not PLACEHOLDER.search(r)}


def defined_names(path: Path) -> dict[str, ast.AST]:
    """The top-level names a module binds: functions, classes, assignments and imports."""
    names: dict[str, ast.AST] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names[name.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
    return names


def module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    return base / "__init__.py" if (base / "__init__.py").exists() else (
        base.with_suffix(".py") if base.with_suffix(".py").exists() else None)


def exists(reference: str, where: str = "") -> bool:
    """Whether a reference found in the file ``where`` (relative to the root) names something that is there."""
    if "/" in reference or TOP_DOC.fullmatch(reference):
        return reference in ADDED_ELSEWHERE or (ROOT / reference).exists() or (
            "/" not in reference and (ROOT / where).parent.joinpath(reference).exists())
    parts = reference.split(".")
    for n in range(len(parts), 0, -1):   # the longest prefix that is a module, then names inside it
        path = module_file(parts[:n])
        if path is None:
            continue
        rest = parts[n:]
        if not rest:
            return True
        names = defined_names(path)
        if rest[0] not in names and module_file(parts[:n] + rest[:1]) is None:
            return False
        node = names.get(rest[0])
        if len(rest) > 1 and isinstance(node, ast.ClassDef):   # Class.attribute: look in the class body
            return any(rest[1] in (getattr(b, "name", None), *[getattr(t, "id", None) for t in
                                   getattr(b, "targets", [getattr(b, "target", None)])]) for b in node.body)
        return True
    return False


def stale_references() -> set[tuple[str, str]]:
    return {(name, ref) for name, text in doc_texts().items() for ref in references(text) if not exists(ref, name)}


def test_the_reference_finder():
    text = ("See slotlib/runs/grid.py, `params/demo.yaml` and [design](docs/design.md#cells); DESIGN.md, "
            "python -m slotlib.runs.grid; slotlib.runs.folder.best_finished_cell. Not: ../shared/weights, "
            "outputs/demo/x, ../notebooks/a.ipynb, params/<name>.yaml, docs/gpu/*.md, slotlib/NAME.py, "
            "https://github.com/o/slotlib/blob/x.py, tests/... and  ~/slotlib/x")
    assert references(text) == {"slotlib/runs/grid.py", "params/demo.yaml", "docs/design.md", "slotlib.runs.grid",
                                "slotlib.runs.folder.best_finished_cell", "DESIGN.md"}
    assert exists("slotlib.runs.folder.best_finished_cell") and exists("slotlib.config.classify")
    assert exists("slotlib.runs.folder.DamagedRunFile") and exists("docs/design.md")
    assert not exists("slotlib.scenes") and not exists("slotlib.runs.folder.no_such_name")
    assert not exists("slotlib/config.py") and not exists("benchmarks/cells_per_gpu.sh") and not exists("DESIGN.md")
    assert exists("README.md") and exists("README.md", "benchmarks/gpu_session/x.md")


def test_every_referenced_path_and_module_exists():
    stale = stale_references()
    missing = sorted(stale - PENDING)
    assert missing == [], "stale references (file, reference): " + "; ".join(f"{f}: {r}" for f, r in missing)
    fixed = sorted(PENDING - stale)
    assert fixed == [], f"no longer stale, remove from PENDING: {fixed}"

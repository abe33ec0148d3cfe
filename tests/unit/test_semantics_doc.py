"""docs/SEMANTICS.md names the test behind every promise: each named test must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "SEMANTICS.md"
REF = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test_")}


def test_every_test_the_semantics_doc_names_exists():
    refs = REF.findall(DOC.read_text())
    assert len(refs) > 40, "the semantics doc names fewer tests than it should"
    missing = []
    for file, name in refs:
        path = ROOT / file
        if not path.is_file() or name not in defined_tests(path):
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/SEMANTICS.md names tests that do not exist: {missing}"


def test_every_operation_row_names_a_test():
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| `") or line.startswith("| any") or line.startswith("| release")]
    rows = [r for r in rows if r.count("|") >= 6]  # the operations table
    bare = [r.split("|")[1].strip() for r in rows if not REF.search(r)]
    assert not bare, f"operation rows without a test: {bare}"

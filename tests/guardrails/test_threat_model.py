"""docs/threat-model.md stays true: every test it cites exists, and every threat names a test, or is Accepted or a Gap.

Fast (no test is run, files are read with ``ast``), so a renamed or deleted test fails here at once instead of
leaving the threat model claiming a mitigation nothing checks.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "threat-model.md"

# `tests/<path>.py::<name>` in backticks, as the page cites tests.
CITATION = re.compile(r"`(tests/[\w/.-]+\.py)::(\w+)`")
# A threat row: a table row whose first cell is an id such as G1, H21, P7.
ROW = re.compile(r"^\|\s*([A-Z]\d+)\s*\|")


def citations(text: str) -> list[tuple[str, str]]:
    return CITATION.findall(text)


@cache
def functions_in(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return frozenset(node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef))


def missing(cited: list[tuple[str, str]]) -> list[str]:
    """The citations whose file or function does not exist, each as it is written."""
    problems = []
    for file, name in cited:
        path = ROOT / file
        if not path.is_file():
            problems.append(f"{file}::{name}: no such file")
        elif name not in functions_in(path):
            problems.append(f"{file}::{name}: no function of that name in the file")
    return problems


def threat_rows(text: str) -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            assert match.group(1) not in rows, f"docs/threat-model.md: threat id {match.group(1)} is used twice"
            rows[match.group(1)] = line
    return rows


def test_every_test_the_threat_model_cites_exists() -> None:
    cited = citations(DOC.read_text(encoding="utf-8"))
    assert len(cited) >= 100, f"docs/threat-model.md cites only {len(cited)} tests: is the citation form `tests/<path>.py::<name>` still used?"
    assert missing(cited) == [], "docs/threat-model.md cites tests that do not exist:\n" + "\n".join(missing(cited))


def test_every_threat_names_a_test_or_is_accepted_or_a_gap() -> None:
    rows = threat_rows(DOC.read_text(encoding="utf-8"))
    assert len(rows) >= 60, f"only {len(rows)} threat rows found in docs/threat-model.md"
    bare = [tid for tid, line in rows.items() if not (CITATION.search(line) or "**Accepted**" in line or "**Gap**" in line)]
    assert bare == [], f"threats with neither a test nor **Accepted** nor **Gap**: {bare}"


def test_a_renamed_test_or_a_moved_file_is_caught(tmp_path: Path) -> None:
    # The checker itself, on citations that cannot exist: it must name both.
    this = Path(__file__).relative_to(ROOT).as_posix()
    cited = [(this, "test_that_was_renamed"), ("tests/nowhere/test_gone.py", "test_anything"), (this, "test_every_test_the_threat_model_cites_exists")]
    problems = missing(cited)
    assert problems == [f"{this}::test_that_was_renamed: no function of that name in the file", "tests/nowhere/test_gone.py::test_anything: no such file"]

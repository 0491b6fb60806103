"""docs/design.md stays current: its outcome table is the code's vocabulary, its rules are the ones cited."""

from __future__ import annotations

import re
from pathlib import Path

from rotation.outcomes import Outcome
from tests.helpers.paths import ROOT

DESIGN = (ROOT / "docs" / "design.md").read_text()


def _section(title: str) -> str:
    return DESIGN.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_outcome_table_is_the_outcome_enum_with_its_exit_codes():
    """Every outcome is in the table once, no other, and its exit column says whether it needs attention."""
    rows = re.findall(r"^\| `([a-z-]+)` \| [^|]+ \| ([01]) \|$", _section("Outcomes"), flags=re.MULTILINE)
    assert [name for name, _ in rows] == [o.value for o in Outcome]
    for name, code in rows:
        assert (code == "1") == Outcome(name).needs_attention, name


def test_every_rule_the_code_cites_is_written_down():
    """Each "rule N" cited in rotation/ and function_app.py is a numbered rule of docs/design.md."""
    written = {int(n) for n in re.findall(r"^(\d+)\. \*\*", _section("The rules of rotation"), re.MULTILINE)}
    sources = [*sorted((ROOT / "rotation").rglob("*.py")), ROOT / "function_app.py"]
    cited = {int(n) for path in sources for n in re.findall(r"\brules? (\d+)\b", path.read_text())}
    assert cited
    assert cited <= written
    assert written == set(range(1, len(written) + 1))


def test_no_reference_to_documents_outside_the_repository():
    """Comments point at docs/design.md, not at design notes a clone of the repository does not contain."""
    roots = ("rotation", "azsim", "scripts", "tests", "infra", "docs")
    files = [
        p for root in roots for p in (ROOT / root).rglob("*") if p.suffix in {".py", ".md", ".bicep", ".sh"}
    ]
    offenders = [
        f"{p.relative_to(ROOT)}: {line.strip()}"
        for p in [*files, ROOT / "function_app.py", ROOT / "README.md"]
        if p != Path(__file__)
        for line in p.read_text().splitlines()
        if re.search(r"\b(DESIGN|AZURE-FACTS|STYLE)\.md", line)
        and " not in " not in line  # a check of absence
    ]
    assert offenders == []

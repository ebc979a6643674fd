"""docs/reference.md is where code cites published numbers: every cited section exists, and nothing points
at notes a user's checkout does not have."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers.runs import REPO

REFERENCE = REPO / "docs" / "reference.md"
CITING = ["plm", "configs", "tests", "benchmarks", "evaluation", "scripts"]
SUFFIXES = {".py", ".yaml", ".yml", ".sh", ".sbatch", ".md"}
CITATION = re.compile(r'docs/reference\.md,? ?\(?((?:"[^"\n]+"(?:, )?)+)')


def _cited_sections(text: str) -> list[str]:
    # undo string escapes and implicit concatenation ("a " "b") so a citation split over lines reads whole
    text = re.sub(r'"\s*\n\s*"', "", text.replace('\\"', '"'))
    return [s for m in CITATION.finditer(text) for s in re.findall(r'"([^"]+)"', m.group(1))]


def _files() -> list[Path]:
    return [p for d in CITING for p in (REPO / d).rglob("*") if p.is_file() and p.suffix in SUFFIXES]


def test_every_cited_section_is_a_heading_of_docs_reference():
    headings = {
        line.lstrip("#").strip() for line in REFERENCE.read_text().splitlines() if line.startswith("#")
    }
    cited = {(p.relative_to(REPO).as_posix(), s) for p in _files() for s in _cited_sections(p.read_text())}
    assert cited, "no citation of docs/reference.md found: the pattern no longer matches the code's style"
    missing = sorted((path, s) for path, s in cited if s not in headings)
    assert not missing, (
        f"cited sections missing from docs/reference.md (headings: {sorted(headings)}): {missing}"
    )


def test_no_citation_of_notes_outside_the_checkout():
    outside = ["REFERENCE" + ".md", "STYLE" + ".md", "DESIGN" + ".md"]
    hits = [
        f"{p.relative_to(REPO)}: {name}"
        for p in _files() + [REFERENCE, REPO / "README.md"]
        for name in outside
        if name in p.read_text()
    ]
    assert not hits, f"cite docs/reference.md (or the paper) instead: {hits}"
    assert "/shared" not in REFERENCE.read_text()

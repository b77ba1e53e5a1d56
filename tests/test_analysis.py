"""docs/analysis.md, executed: its Python blocks run in order in one namespace, from the directory of a run
of the sample archive, and each block followed by a ```text block must print exactly that text. README.md's
Python block runs the same way (it shows no output).

CL_ML_TOOLS_UPDATE_DOCS=1 pytest tests/test_analysis.py writes what the blocks print into the document."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.e2e

DOC = REPO / "docs" / "analysis.md"
README = REPO / "README.md"
BLOCK = re.compile(r"```python\n(?P<code>.*?)```\n(?:\n```text\n(?P<output>.*?)```\n)?", re.S)


def execute(doc: Path, text: str, block: re.Match[str], namespace: dict[str, object]) -> str:
    """Run one block of ``doc`` (its text ``text``) in ``namespace``; what it printed, lines right-stripped."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block["code"], f"{doc.name}:{text[: block.start()].count(chr(10)) + 1}", "exec"), namespace)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


def test_blocks_parse() -> None:
    blocks = list(BLOCK.finditer(DOC.read_text()))
    assert len(blocks) >= 7
    assert sum(b["output"] is not None for b in blocks) >= 6


def test_every_example_runs_and_prints_what_the_document_shows(sample_run: Path, monkeypatch) -> None:
    monkeypatch.chdir(sample_run)
    text = DOC.read_text()
    namespace: dict[str, object] = {}
    updated, mismatches, last = [], [], 0
    for block in BLOCK.finditer(text):
        printed = execute(DOC, text, block, namespace)
        if block["output"] is not None:
            if printed != block["output"]:
                mismatches.append((block["code"].splitlines()[-1], block["output"], printed))
            start, end = block.span("output")
            updated += [text[last:start], printed]
            last = end
    if os.environ.get("CL_ML_TOOLS_UPDATE_DOCS"):
        DOC.write_text("".join([*updated, text[last:]]))
        return
    assert not mismatches, "\n\n".join(f"{code}\nshown:\n{want}printed:\n{got}" for code, want, got in mismatches)


def test_the_readme_example_runs(sample_run: Path, monkeypatch) -> None:
    """README.md's one Python block, verbatim, from the directory of the sample run."""
    monkeypatch.chdir(sample_run)
    text = README.read_text()
    (block,) = BLOCK.finditer(text)
    namespace: dict[str, object] = {}
    execute(README, text, block, namespace)
    rows, matrix = namespace["rows"], namespace["matrix"]
    assert matrix.dtype == "float32" and matrix.shape == (len(rows), 384)  # what the README's comment says

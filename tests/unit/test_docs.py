"""Docs that are generated from code stay equal to it."""

from __future__ import annotations

import re
from pathlib import Path

from cdcflow.config import settings_markdown

README = Path(__file__).resolve().parents[2] / "README.md"
_SECTION = re.compile(r"(<!-- settings:start[^>]*-->\n)(.*?)(<!-- settings:end -->)", re.S)


def render_readme(text: str) -> str:
    return _SECTION.sub(lambda m: m.group(1) + settings_markdown() + "\n" + m.group(3), text)


def test_readme_configuration_table_matches_the_settings_model() -> None:
    text = README.read_text()
    assert _SECTION.search(text), "README lost its settings markers"
    assert text == render_readme(text), (
        "README configuration table is stale: run "
        "python -c 'from tests.unit.test_docs import write; write()'"
    )


def test_readme_quick_start_is_the_two_make_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def write() -> None:
    README.write_text(render_readme(README.read_text()))

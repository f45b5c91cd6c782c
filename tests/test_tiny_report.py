"""The README's tiny-HART section is the one the report files give (no retyped numbers)."""

from __future__ import annotations

import pytest

from hart_edu import tiny_report
from hart_edu.paths import REPO_ROOT


def test_readme_section_is_generated_from_the_reports():
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert tiny_report.BEGIN in text and tiny_report.END in text
    in_readme = text.split(tiny_report.BEGIN, 1)[1].split(tiny_report.END, 1)[0].strip()
    assert in_readme == tiny_report.section().strip(), \
        "README.md's tiny-HART section is stale: run python -m hart_edu.tiny_report --write"


def test_every_target_row_and_the_eval_line_are_there():
    body = tiny_report.section()
    assert "| target | >= 0.98 | >= 0.93 | >= 0.85 | >= 0.90 | >= 0.85 | >= 0.70 |" in body
    assert "`eval: n=200 " in body and " all=" in body


def test_a_missing_report_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="transformer_report.json"):
        tiny_report.section(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="markers"):
        tiny_report.write_readme(readme, REPO_ROOT)

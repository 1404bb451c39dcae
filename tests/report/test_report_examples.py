"""The committed example runs (linked from README.md) are real reports of the current schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "reports" / "examples").glob("*/*/report.json"))


def test_readme_links_every_example():
    readme = (REPO / "README.md").read_text()
    assert EXAMPLES
    for path in EXAMPLES:
        assert str(path.parent.relative_to(REPO) / "report.md") in readme, path


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.parent.name)
def test_example_validates_and_rerenders(path):
    import jsonschema

    from compress.report.markdown import render
    from compress.report.schema import Report, report_json_schema

    data = json.loads(path.read_text())
    jsonschema.validate(data, report_json_schema())
    report = Report.model_validate(data)
    # the cost section always has the saving with its interval; an exchange rate only when
    # the saving and the perplexity increase are both significant
    from compress.gate import exit_code

    # a real run on some host: its exit code is the one its gate results imply
    assert report.exit_code == exit_code(report.gates)
    assert report.cost is not None and report.cost.cost_saving_ci95
    assert render(report) == (path.parent / "report.md").read_text()


def test_readme_numbers_are_generated_from_the_committed_reports():
    """README's results table is `python -m compress.report.readme` output: no drift."""
    from compress.report.readme import main

    assert main(["--root", str(REPO), "--check"]) == 0

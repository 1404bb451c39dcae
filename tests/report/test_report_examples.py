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

    from compress.gate import exit_code
    from compress.report.markdown import render
    from compress.report.schema import (
        REPORT_SCHEMA_VERSION,
        migrate,
        parse_report,
        report_json_schema,
    )

    data = json.loads(path.read_text())
    current = data["schema_version"] == REPORT_SCHEMA_VERSION
    jsonschema.validate(migrate(data), report_json_schema())  # older reports: once migrated
    report = parse_report(path.read_text())
    # a real run on some host: its exit code is the one its gate results imply, per variant
    # and overall (the worst); every gated variant has a cost saving with its interval
    for v in report.variants:
        assert v.exit_code == exit_code(v.gates)
        assert v.cost is not None and v.cost.cost_saving_ci95
    assert report.exit_code == exit_code([g for v in report.variants for g in v.gates])
    md = render(report)
    if current:  # the committed report.md is what this version renders
        assert md == (path.parent / "report.md").read_text()
    else:
        assert f"Read from a schema v{data['schema_version']} report.json" in md


def test_readme_numbers_are_generated_from_the_committed_reports():
    """README's results table is `python -m compress.report.readme` output: no drift."""
    from compress.report.readme import main

    assert main(["--root", str(REPO), "--check"]) == 0

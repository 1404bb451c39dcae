"""The pages as a reviewer sees them: headless Chromium loads report.html and a compare page
from disk; no console errors, no network requests, every plot drawn and non-empty, and the
numbers the page shows equal those in report.json. Skips, saying why, without a browser."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.report import browser, compare_page, runs
from compress.report.html import render_html
from compress.report.schema import parse_report

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    ROOT / "reports/examples/smollm2-int4/20261130T211733Z",
    ROOT / "reports/examples/smollm2-int8/20261130T212152Z",
    ROOT / "reports/examples/smollm2-compare/20261201T022627Z",
]
pytestmark = pytest.mark.skipif(browser.available() is not None, reason=str(browser.available()))


@pytest.fixture(scope="module")
def chromium():
    with browser.launch() as b:
        yield b


def _clean(check: browser.PageCheck) -> None:
    assert check.errors == [], check.errors
    assert check.requests == [], check.requests
    assert check.plots, "no plots on the page"
    assert check.empty_plots == [], check.empty_plots


@pytest.mark.parametrize("run_dir", [EXAMPLES[0], EXAMPLES[2]], ids=["one-variant", "four"])
def test_report_page_loads_clean_and_matches_report_json(chromium, tmp_path, run_dir):
    rep = parse_report((run_dir / "report.json").read_text())
    page = tmp_path / "report.html"
    page.write_text(render_html(rep))
    seen = browser.inspect_page(chromium, page)
    _clean(seen)
    assert seen.body["exitCode"] == str(rep.exit_code)
    plots = {p["id"] for p in seen.plots}
    assert {"bars-latency", "bars-throughput", "bars-memory", "bars-quality"} <= plots
    assert {"latency-bs1", "latency-bs8"} <= plots
    shown = {
        (v["row"].get("variant"), v["row"].get("metric"), v["field"]): float(v["value"])
        for v in seen.values
        if v["row"].get("row") == "comparison" and v["value"] != "null"
    }
    checked = 0
    for variant in rep.variants:
        for c in variant.comparisons:
            for field in ("baseline", "compressed", "ratio"):
                value = getattr(c, field)
                if value is not None:
                    assert shown[(variant.name, c.metric, field)] == value
                    checked += 1
    assert checked > 50
    gates = [v for v in seen.values if v["row"].get("row") == "gate" and v["field"] == "observed"]
    assert len(gates) == sum(len(v.gates) for v in rep.variants)


def test_compare_page_loads_clean_and_matches_the_rows(chromium, tmp_path):
    loaded = runs.load_runs(EXAMPLES)
    rows = runs.build_rows(loaded)
    page = tmp_path / "compare.html"
    page.write_text(compare_page.render_html(loaded, rows, []))
    seen = browser.inspect_page(chromium, page)
    _clean(seen)
    assert [p["id"] for p in seen.plots] == ["pareto"]
    assert seen.body["runs"] == "3"
    by_key = {(r.run_id, r.variant): r for r in rows}
    savings = [v for v in seen.values if v["field"] == "cost_saving"]
    assert len(savings) == len(rows)
    for v in savings:
        row = by_key[(v["row"]["run"], v["row"]["variant"])]
        assert float(v["value"]) == row.cost_saving
    front = {
        (v["row"]["run"], v["row"]["variant"]) for v in savings if v["row"]["pareto"] == "true"
    }
    assert ("20261201T022627Z", "int4") in front

"""`compress gate` / `compress report` on saved runs: CI outputs (JUnit, PR summary, policy for
inconclusive gates), full metric names off a terminal, bad input. Uses the committed example
runs (real SmolLM2 reports), so no model is loaded."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from compress import cli
from compress.cli import app
from compress.report.schema import parse_report

ROOT = Path(__file__).resolve().parents[1]
INT4 = ROOT / "reports/examples/smollm2-int4/20261130T211733Z"
MANY = ROOT / "reports/examples/smollm2-compare/20261201T022627Z"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_example_gates_are_what_these_tests_assume():
    rep = parse_report((INT4 / "report.json").read_text())
    assert [g.status for g in rep.variants[0].gates] == ["pass", "inconclusive", "pass"]


@pytest.mark.parametrize(("policy", "code"), [(None, 3), ("fail", 1), ("pass", 0)])
def test_inconclusive_policy_sets_the_exit_code(policy, code):
    args = ["gate", INT4] + (["--inconclusive-as", policy] if policy else [])
    res = run(*args)
    assert res.exit_code == code, res.output


def test_unknown_policy_is_bad_input():
    res = run("gate", INT4, "--inconclusive-as", "maybe")
    assert res.exit_code == 2 and "--inconclusive-as 'maybe'" in res.output


def _cases(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    return {c.get("name"): c for c in root.iter("testcase")}


@pytest.mark.parametrize(
    ("policy", "tag"), [(None, "skipped"), ("fail", "failure"), ("pass", "system-out")]
)
def test_junit_one_case_per_gate_inconclusive_by_policy(tmp_path, policy, tag):
    junit = tmp_path / "gates.xml"
    args = ["gate", INT4, "--junit", junit] + (["--inconclusive-as", policy] if policy else [])
    run(*args)
    cases = _cases(junit)
    assert len(cases) == 3
    dec = next(c for name, c in cases.items() if name.startswith("decode.tokens_per_s"))
    node = dec.find(tag)
    assert node is not None
    if tag != "system-out":  # the message carries the observed value and its interval
        assert "inconclusive: observed" in node.get("message") and "95% CI" in node.get("message")
    root = ET.parse(junit).getroot()
    assert root.get("tests") == "3" and root.get("failures") == ("1" if policy == "fail" else "0")


def test_junit_failed_gate_is_a_failure_with_its_interval(tmp_path):
    gates = tmp_path / "g.yaml"
    gates.write_text("gates:\n  - {metric: wikitext2.perplexity, max_ratio: 1.0001}\n")
    junit = tmp_path / "out.xml"
    res = run("gate", INT4, "--gates", gates, "--junit", junit)
    assert res.exit_code == 1
    (case,) = _cases(junit).values()
    failure = case.find("failure")
    assert failure.get("type") == "gate_failed"
    assert "fail: observed 1.00" in failure.get("message") and "95% CI" in failure.get("message")


def test_summary_md_is_short_and_link_free(tmp_path):
    md = tmp_path / "summary.md"
    res = run("gate", MANY, "--summary-md", md, "--inconclusive-as", "fail")
    text = md.read_text()
    assert text.startswith("### compress: smollm2-compare:")
    assert f"(exit {res.exit_code})" in text.splitlines()[0]
    assert "://" not in text and "](" not in text and "<img" not in text
    rep = parse_report((MANY / "report.json").read_text())
    for v in rep.variants:
        if not v.control:
            assert f"| {v.name} | weights.bytes max_ratio" in text
    assert "**fail** (`--inconclusive-as`)" in text
    assert len(text.splitlines()) < 40


def test_unwritable_outputs_are_bad_input_and_nothing_is_written(tmp_path):
    md = tmp_path / "summary.md"
    res = run("gate", INT4, "--summary-md", md, "--junit", tmp_path / "missing" / "j.xml")
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not md.exists()
    res = run("gate", INT4, "--junit", tmp_path)  # a folder
    assert res.exit_code == 2 and "is a folder" in res.output


def test_truncated_report_is_bad_input(tmp_path):
    text = (INT4 / "report.json").read_text()
    bad = tmp_path / "report.json"
    bad.write_text(text[: len(text) // 2])
    res = run("gate", bad)
    assert res.exit_code == 2 and "truncated or corrupt" in res.output


def test_newer_schema_is_bad_input(tmp_path):
    data = json.loads((MANY / "report.json").read_text())
    data["schema_version"] = 99
    (tmp_path / "report.json").write_text(json.dumps(data))
    res = run("gate", tmp_path)
    assert res.exit_code == 2 and "newer than this tool reads" in res.output


def test_tables_keep_full_metric_names_off_a_terminal(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    buf = io.StringIO()
    console = Console(file=buf)  # a StringIO is not a terminal, like a CI log
    cli._fit_width(console)
    monkeypatch.setattr(cli, "out", console)
    rep = parse_report((MANY / "report.json").read_text())
    cli._print_summary(rep)
    text = buf.getvalue()
    for name in ("decode.latency_ms_per_token@bs8", "cost.usd_per_million_tokens@bs8"):
        assert name in text
    assert "…" not in text


def test_report_html_option_writes_the_page(tmp_path):
    page = tmp_path / "r.html"
    res = run("report", INT4, "--html", page)
    assert res.exit_code == 0, res.output
    assert page.read_text().lstrip().lower().startswith("<!doctype html>")


@pytest.mark.parametrize("version", [0, -3, "3", True])
def test_unknown_schema_versions_are_bad_input(tmp_path, version):
    data = json.loads((MANY / "report.json").read_text())
    data["schema_version"] = version
    (tmp_path / "report.json").write_text(json.dumps(data))
    res = run("gate", tmp_path)
    assert res.exit_code == 2 and f"schema_version {version!r}" in res.output

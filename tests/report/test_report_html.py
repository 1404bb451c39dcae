"""compress.report.html: one self-contained page with the report's numbers (exact, in
data-value), its figures as inline SVG, escaped report text, and the same bytes every time."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from html.parser import HTMLParser
from pathlib import Path

import pytest

from compress.report.html import render_html
from compress.report.schema import (
    Comparison,
    CostSummary,
    GateResult,
    Measurement,
    Report,
    RunRecord,
    VariantResult,
    parse_report,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "reports" / "examples").glob("*/*/report.json"))
EVIL = "<script>alert('x')</script>"
#: figures every committed example has (energy is unavailable on their CPU host: no figure)
EXAMPLE_PLOTS = {
    "bars-latency",
    "bars-throughput",
    "bars-memory",
    "bars-cost",
    "bars-quality",
    "latency-bs1",
    "kld",
}


class Page(HTMLParser):
    """The parts of a page the tests read: elements, rows with their cells, figures."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.rows: list[dict] = []
        self.figures: dict[str, set[str]] = {}
        self._figure: str | None = None
        self._depth = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        if tag == "tr":
            self.rows.append({"attrs": a, "cells": {}})
        elif tag == "td" and "data-field" in a and self.rows:
            self.rows[-1]["cells"][a["data-field"]] = a
        if tag == "figure" and "data-plot" in a and self._figure is None:
            self._figure, self._depth = a["data-plot"], 0
            self.figures[self._figure] = set()
        if self._figure is not None:
            self.figures[self._figure].add(tag)
            self._depth += tag == "figure"

    def handle_endtag(self, tag):
        if self._figure is not None and tag == "figure":
            self._depth -= 1
            if self._depth == 0:
                self._figure = None

    def of(self, kind: str, **match: str) -> list[dict]:
        out = [r for r in self.rows if r["attrs"].get("data-row") == kind]
        return [r for r in out if all(r["attrs"].get(f"data-{k}") == v for k, v in match.items())]


@cache
def _rendered(path: Path) -> tuple[Report, str]:
    report = parse_report(path.read_text())
    return report, render_html(report)


def _exact(cell: dict, value: float | None) -> None:
    text = cell["data-value"]
    assert (text == "null") if value is None else (float(text) == value), (cell, value)


def _self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for m in re.finditer(r"https?://", page):
        before = page[max(0, m.start() - 40) : m.start()]
        assert re.search(r'xmlns(:\w+)?="$', before), page[m.start() - 40 : m.end() + 40]
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "@import" not in page and "url(http" not in page and "@font-face" not in page


def _plots_ok(doc: Page, expected: set[str]) -> None:
    assert expected <= set(doc.figures), set(doc.figures)
    for pid, tags in doc.figures.items():
        assert "svg" in tags and "figcaption" in tags, pid
        assert "path" in tags or "rect" in tags, pid


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.parent.name)
def test_committed_examples_render_with_exact_numbers(path):
    report, page = _rendered(path)
    _self_contained(page)
    doc = Page(page)
    body = next(a for t, a in doc.elements if t == "body")
    assert body["data-exit-code"] == str(report.exit_code)
    ratios = {f"ratios-{i}" for i in range(len(report.variants))}
    batches = report.baseline.context.get("batch_sizes") or [1]  # each profiled batch size
    latency = {f"latency-bs{b}" for b in batches}
    _plots_ok(doc, EXAMPLE_PLOTS | ratios | latency)
    assert "bars-energy" not in doc.figures  # unavailable everywhere: no bar, no figure
    for v in report.variants:
        rows = doc.of("comparison", variant=v.name)
        assert [r["attrs"]["data-metric"] for r in rows] == [c.metric for c in v.comparisons]
        for r, c in zip(rows, v.comparisons, strict=True):
            _exact(r["cells"]["baseline"], c.baseline)
            _exact(r["cells"]["compressed"], c.compressed)
            _exact(r["cells"]["ratio"], c.ratio)
            _exact(r["cells"]["delta"], c.delta)
            assert r["attrs"]["data-verdict"] == c.verdict
        gates = doc.of("gate", variant=v.name)
        assert [(g["attrs"]["data-metric"], g["attrs"]["data-status"]) for g in gates] == [
            (g.metric, g.status) for g in v.gates
        ]
        for row, g in zip(gates, v.gates, strict=True):
            _exact(row["cells"]["observed"], g.observed)
            assert f"status-{g.status}" in row["attrs"]["class"]
        assert v.cost is None or v.cost.headline.replace("'", "&#39;") in page
    energy = re.search(r'<li data-row="unavailable" data-metric="energy.joules_per_token".*', page)
    assert energy and "unavailable — no NVML" in energy[0]
    if report.run.get("migrated_from_schema"):
        assert f"Read from a schema v{report.run['migrated_from_schema']} report.json" in page


def _m(name: str, value: float | None, unit: str, up: bool, **kw) -> Measurement:
    if value is not None and "ci95" not in kw:
        kw["ci95"] = [value * 0.95, value * 1.05]
    kw.setdefault("n", 4)
    return Measurement(name=name, value=value, unit=unit, higher_is_better=up, **kw)


def _record(label: str, speed: float, kld: bool = False, energy: bool = False) -> RunRecord:
    lat = [1000 / speed * f for f in (0.97, 1.0, 1.01, 1.04)]
    ms = [
        _m("decode.tokens_per_s", speed, "tokens/s", True),
        _m("decode.latency_ms_per_token", 1000 / speed, "ms", False, samples=lat),
        _m("decode.latency_ms_p90", 1100 / speed, "ms", False),
        _m("decode.latency_ms_per_token@bs8", 3000 / speed, "ms", False, samples=lat[:3]),
        _m("memory.peak_rss_bytes", 2e9 / speed, "bytes", False),
        _m("wikitext2.perplexity", 20.0 + speed / 100, "ppl", False),
        _m("piqa.acc", 0.7, "fraction", True),
    ]
    if energy:
        ms.append(_m("energy.joules_per_token", 0.5, "J/token", False))
    else:
        reason = "no RAPL counter <b>here</b>"
        ms.append(
            _m(
                "energy.joules_per_token",
                None,
                "J/token",
                False,
                n=0,
                status="unavailable",
                reason=reason,
            )
        )
    if kld:
        for i, name in enumerate(("kld.median", "kld.p90", "kld.p95", "kld.p99", "kld.p99_9")):
            ms.append(_m(name, 0.001 * 3**i, "nats/token", False))
        ms += [
            _m("kld.mean", 0.004, "nats/token", False, stderr=0.0002),
            _m("kld.max", 2.5, "nats/token", False, ci95=None),
            _m("kld.same_top1", 0.951, "fraction", True, stderr=0.001),
        ]
    return RunRecord(
        label=label, model={"spec": "tiny", "note": EVIL}, dtype="float32", measurements=ms
    )


def _comparison(metric: str, unit: str, b: float | None, c: float | None, **kw) -> Comparison:
    ratio = None if b is None or c is None else c / b
    kw.setdefault("higher_is_better", True)
    kw.setdefault("verdict", "better" if ratio else "unknown")
    return Comparison(
        metric=metric,
        unit=unit,
        baseline=b,
        compressed=c,
        delta=None if ratio is None else c - b,
        ratio=ratio,
        ratio_ci95=None if ratio is None else [ratio * 0.9, ratio * 1.1],
        paired=True,
        **kw,
    )


def _cost() -> CostSummary:
    return CostSummary(
        usd_per_device_hour=1.0,
        device_name="box",
        basis="a stated price",
        baseline_usd_per_million_tokens=9.0,
        compressed_usd_per_million_tokens=5.0,
        cost_saving_fraction=-0.44,
        cost_saving_ci95=[-0.5, -0.4],
        memory_saving_fraction=-0.5,
        quality_loss_fraction=0.01,
        quality_loss_ci95=[0.005, 0.015],
        saving_per_quality_loss=44.0,
        headline=f"Serving cost -44% {EVIL}",
    )


def _gate(status: str, observed: float | None) -> GateResult:
    iv = None if observed is None else [observed * 0.9, observed * 1.1]
    return GateResult(
        metric=f"gate.{status}",
        kind="min_ratio",
        threshold=1.2,
        status=status,
        observed=observed,
        interval=iv,
        explanation=f"ratio vs threshold {EVIL}",
    )


def synthetic(status: str = "ok") -> Report:
    """A baseline, a gated int4 variant with KLD and task flips, and a control."""
    base = _record("baseline", 30.0, energy=True)
    flips = {"lost": list(range(30)), "gained": [100, 101]}
    comps = [
        _comparison("decode.tokens_per_s", "tokens/s", 30.0, 54.0),
        _comparison("energy.joules_per_token", "J/token", 0.5, None),
        _comparison(
            "piqa.acc", "fraction", 0.7, 0.644, verdict="worse", n=500, p_value=1.2e-6, flips=flips
        ),
    ]
    gates = [_gate("pass", 1.8), _gate("fail", 0.9), _gate("inconclusive", None)]
    int4 = VariantResult(
        name="int4",
        description=EVIL,
        record=_record("int4", 54.0, kld=True),
        comparisons=comps,
        cost=_cost(),
        gates=gates,
        exit_code=1,
        notes=[EVIL],
    )
    control = VariantResult(
        name="bf16",
        control=True,
        record=_record("bf16", 31.0),
        comparisons=[_comparison("decode.tokens_per_s", "tokens/s", 30.0, 31.0)],
        cost=None,
        gates=[],
        exit_code=0,
    )
    return Report(
        tool={"name": "compress", "version": "test"},
        run={"id": "r1", "quick": True, "status": status, "wall_s": 12.5},
        recipe={"name": EVIL, "_sha256": "ab" * 32, "seed": 0, "_text": f"name: {EVIL}\n"},
        environment={"device": "cpu", "versions": {"python": "3.11"}, "cpu": "x", "cores": 2},
        data=[{"name": "wikitext2", "text_sha256": "cd" * 32, "location": "/data"}],
        definitions={"piqa.acc": f"accuracy {EVIL}"},
        baseline=base,
        variants=[int4, control],
        exit_code=1,
        notes=[f"note {EVIL}"],
    )


@cache
def _synthetic_page() -> str:
    return render_html(synthetic())


def test_synthetic_report_has_every_section():
    page = _synthetic_page()
    _self_contained(page)
    doc = Page(page)
    expected = {"bars-latency", "bars-throughput", "bars-memory", "bars-energy", "bars-quality"}
    expected |= {"latency-bs1", "latency-bs8", "kld", "flips", "ratios-0", "ratios-1"}
    _plots_ok(doc, expected)
    body = next(a for t, a in doc.elements if t == "body")
    assert body["data-exit-code"] == "1" and body["data-status"] == "fail"
    assert "n (processes): baseline 4, int4 4, bf16 4" in page
    assert "n (processes): baseline 3, int4 3, bf16 3" in page  # the @bs8 samples
    statuses = [g["attrs"]["data-status"] for g in doc.of("gate", variant="int4")]
    assert statuses == ["pass", "fail", "inconclusive"]
    _exact(doc.of("gate", variant="int4")[2]["cells"]["observed"], None)
    assert "No gates: a control is reported, not gated." in page
    assert "<li>Price basis: 1.0 USD/h for box; a stated price.</li>" in page
    cost = next(a for t, a in doc.elements if t == "ul" and a.get("class") == "cost")
    assert cost["data-variant"] == "int4" and float(cost["data-cost-saving"]) == -0.44


def test_kld_table_and_plot():
    doc = Page(_synthetic_page())
    (row,) = doc.of("kld", variant="int4")
    kld = {
        a["data-metric"]: a
        for t, a in doc.elements
        if t == "td" and a.get("data-metric", "").startswith("kld")
    }
    report = synthetic()
    for name, cell in kld.items():
        assert float(cell["data-value"]) == report.variants[0].record.get(name).value
    assert set(kld) == {
        "kld.mean",
        "kld.median",
        "kld.p90",
        "kld.p95",
        "kld.p99",
        "kld.p99_9",
        "kld.max",
        "kld.same_top1",
    }
    page = _synthetic_page()
    assert "0.004 ± 0.0002" in page and "95.100 ± 0.100%" in page
    plotted = doc.of("plotted", model="int4")
    assert {r["attrs"]["data-metric"] for r in plotted} >= {"kld.mean", "kld.p99_9", "kld.max"}


def test_task_flips_with_counts_p_and_first_items():
    page = _synthetic_page()
    doc = Page(page)
    (row,) = doc.of("flips", variant="int4", metric="piqa.acc")
    assert row["attrs"]["data-lost"] == "30" and row["attrs"]["data-gained"] == "2"
    _exact(row["cells"]["p_value"], 1.2e-6)
    first = ", ".join(str(i) for i in range(20))
    assert f"<code>[{first}, ...]</code>" in page and "<code>[100, 101]</code>" in page
    assert not doc.of("flips", variant="bf16")
    plotted = {
        float(r["cells"]["value"]["data-value"]) for r in doc.of("plotted", metric="piqa.acc")
    }
    assert plotted == {30.0, 2.0, 0.644 / 0.7, 0.7}  # flips' bars, ratio, quality bars


def test_unavailable_energy_is_listed_with_its_reason_and_draws_no_bar():
    page = _synthetic_page()
    doc = Page(page)
    (item,) = re.findall(r'<li data-row="unavailable" data-metric="energy[^"]*".*?</li>', page)
    assert 'data-models="int4 bf16"' in item
    assert (
        "unavailable — no RAPL counter &lt;b&gt;here&lt;/b&gt; (int4, bf16; no bar drawn)" in item
    )
    bars = doc.of("plotted", metric="energy.joules_per_token")
    assert [b["attrs"]["data-model"] for b in bars] == ["baseline"]  # only the measured one
    # the comparison row keeps the missing value as null, never 0
    (row,) = doc.of("comparison", variant="int4", metric="energy.joules_per_token")
    _exact(row["cells"]["compressed"], None)
    _exact(row["cells"]["ratio"], None)


def test_report_text_is_escaped():
    page = _synthetic_page()
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "<b>here</b>" not in page


def test_rendering_is_deterministic():
    assert render_html(synthetic()) == _synthetic_page()


def test_a_failed_run_with_little_in_it_renders():
    r = synthetic(status="failed")
    bare = RunRecord(
        label="x",
        model={},
        dtype="float32",
        measurements=[_m("decode.tokens_per_s", 10.0, "tokens/s", True, ci95=None)],
    )
    v = VariantResult(name="x", record=bare, comparisons=[], cost=None, gates=[], exit_code=1)
    r = r.model_copy(update={"baseline": bare, "variants": [v], "data": [], "definitions": {}})
    page = render_html(r.model_copy(update={"recipe": {}, "environment": {}}))
    _self_contained(page)
    assert "RUN FAILED" in page
    doc = Page(page)
    assert set(doc.figures) == {"bars-throughput"}
    assert "latency-bs1" not in doc.figures and "kld" not in doc.figures


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, compress.report.html; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

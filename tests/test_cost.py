"""compress.cost: $ per 1M tokens and cost saved per unit of quality lost."""

from __future__ import annotations

import pytest

from compress import stats
from compress.cost import COST_METRIC, QUALITY_METRIC, cost_measurement, summarize
from compress.recipe import CostConfig
from compress.report.compare import compare
from compress.report.schema import Comparison, Measurement, RunRecord

CFG = CostConfig(usd_per_device_hour=2.0, device_name="test box")


def _cmp(metric, ratio, ratio_ci=None, baseline=10.0):
    return Comparison(
        metric=metric,
        unit="u",
        higher_is_better=False,
        baseline=baseline,
        compressed=baseline * ratio,
        delta=baseline * (ratio - 1),
        ratio=ratio,
        ratio_ci95=list(ratio_ci) if ratio_ci else None,
        paired=False,
        verdict="better",
    )


def _rec(label, tps: list[float] | None) -> RunRecord:
    ms = []
    if tps is not None:
        ms.append(Measurement(**stats.measurement("decode.tokens_per_s", tps, "tok/s", True, "t")))
    return RunRecord(label=label, model={}, dtype="f", measurements=ms)


def test_cost_measurement_per_sample():
    m = cost_measurement(_rec("baseline", [100.0, 200.0, 400.0]), CFG)
    # 2 USD/h / (tps * 3600 s/h) * 1e6 tokens
    expected = [2.0 / (t * 3600) * 1e6 for t in (100.0, 200.0, 400.0)]
    assert m.samples == pytest.approx(expected)
    assert m.value == pytest.approx(expected[1])  # median
    assert m.status == "estimated" and m.unit == "USD/1M tokens" and not m.higher_is_better
    assert m.ci95 is not None and m.ci95[0] < m.ci95[1]
    assert "2.0" in m.reason and "test box" in m.reason


def test_cost_measurement_unavailable_without_throughput():
    m = cost_measurement(_rec("baseline", None), CFG)
    assert m.value is None and m.status == "unavailable" and m.reason


def test_no_measurable_quality_loss_headline():
    comps = [
        _cmp(COST_METRIC, 0.5, (0.45, 0.55)),
        _cmp(QUALITY_METRIC, 1.004, (0.998, 1.010)),
        _cmp("weights.bytes", 0.25, (0.25, 0.25)),
    ]
    s = summarize(comps, CFG)
    assert s.cost_saving_fraction == pytest.approx(0.5)
    assert s.cost_saving_ci95 == pytest.approx([0.45, 0.55])
    assert s.quality_loss_fraction == pytest.approx(0.004)
    assert s.quality_loss_ci95 == pytest.approx([-0.002, 0.010])
    assert s.saving_per_quality_loss is None and s.saving_per_quality_loss_ci95 is None
    assert s.memory_saving_fraction == pytest.approx(0.75)
    assert "no measurable" in s.headline
    assert "-50.0%" in s.headline and "-75.0%" in s.headline
    assert s.baseline_usd_per_million_tokens == 10.0
    assert s.compressed_usd_per_million_tokens == 5.0
    assert s.usd_per_device_hour == 2.0 and s.device_name == "test box"


def test_significant_quality_loss_gives_saving_per_loss():
    comps = [_cmp(COST_METRIC, 0.6, (0.55, 0.65)), _cmp(QUALITY_METRIC, 1.02, (1.01, 1.03))]
    s = summarize(comps, CFG)
    assert s.quality_loss_fraction == pytest.approx(0.02)
    assert s.saving_per_quality_loss == pytest.approx(40.0 / 2.0)  # 40% saved / 2% lost
    assert "no measurable" not in s.headline
    assert "20.00% cost saved per 1% perplexity lost" in s.headline
    # saving 35..45% over loss 1..3%: 11.67 .. 45
    assert s.saving_per_quality_loss_ci95 == pytest.approx([35 / 3, 45.0])
    assert "(range 11.67 to 45.00 from the two 95% intervals)" in s.headline
    assert s.memory_saving_fraction is None


def test_significant_quality_loss_without_ratio_interval():
    s = summarize([_cmp(COST_METRIC, 0.75), _cmp(QUALITY_METRIC, 1.05)], CFG)
    assert s.saving_per_quality_loss == pytest.approx(5.0)
    assert s.cost_saving_ci95 is None and s.quality_loss_ci95 is None
    assert s.saving_per_quality_loss_ci95 is None and "range" not in s.headline


def test_missing_cost_or_quality():
    s = summarize([_cmp(QUALITY_METRIC, 1.02, (1.01, 1.03))], CFG)
    assert s.cost_saving_fraction is None and "could not be compared" in s.headline
    s = summarize([_cmp(COST_METRIC, 0.5, (0.4, 0.6))], CFG)
    assert s.quality_loss_fraction is None and "quality was not evaluated" in s.headline


def test_end_to_end_from_run_records():
    base = _rec("baseline", [10.0, 10.5, 9.5, 10.2, 9.8])
    comp = _rec("compressed", [20.0, 21.0, 19.0, 20.4, 19.6])
    base.measurements.append(cost_measurement(base, CFG))
    comp.measurements.append(cost_measurement(comp, CFG))
    comps = compare(base, comp)
    s = summarize(comps, CFG)
    assert s.cost_saving_fraction == pytest.approx(0.5, abs=0.02)
    assert s.cost_saving_ci95[0] < s.cost_saving_fraction < s.cost_saving_ci95[1]
    assert "quality was not evaluated" in s.headline

"""compress.cost: $ per 1M tokens per batch size, the saving and the loss each with its
interval, and the exchange rate between them (only when both are significant)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from compress import stats
from compress.cost import (
    COST_METRIC,
    QUALITY_METRIC,
    RATE_LEVEL,
    cost_measurement,
    cost_measurements,
    exchange_rate,
    summarize,
)
from compress.recipe import CostConfig
from compress.report.compare import compare
from compress.report.schema import Comparison, Measurement, RunRecord

CFG = CostConfig(usd_per_device_hour=2.0, device_name="test box")
BASIS = {"batch": 1, "runtime": "torch 2.13 eager on cpu", "dtype": "float32 -> bfloat16"}


def _cmp(metric, ratio, se=None, df=5, baseline=10.0, scale="log"):
    """A comparison on the log scale: ratio interval ratio * exp(+-t(df) se)."""
    ci = None
    if se is not None:
        h = st.t.ppf(0.975, df) * se
        ci = [ratio * math.exp(-h), ratio * math.exp(h)]
    return Comparison(
        metric=metric,
        unit="u",
        higher_is_better=False,
        baseline=baseline,
        compressed=baseline * ratio,
        delta=baseline * (ratio - 1),
        ratio=ratio,
        ratio_ci95=ci,
        paired=True,
        verdict="better",
        scale=scale,
        log_ratio_stderr=se,
        df=df if se is not None else None,
    )


def _adjusted(ratio, se, df):
    h = st.t.ppf(0.5 + RATE_LEVEL / 2, df) * se
    return ratio * math.exp(-h), ratio * math.exp(h)


def _rec(label, tps: list[float] | None, tps8: list[float] | None = None) -> RunRecord:
    ms = []
    for name, xs in (("decode.tokens_per_s", tps), ("decode.tokens_per_s@bs8", tps8)):
        if xs is not None:
            ms.append(Measurement(**stats.log_measurement(name, xs, "tok/s", True, "per process")))
    return RunRecord(label=label, model={}, dtype="f", measurements=ms)


def _first_sentence(text: str) -> str:
    return text.split(". ")[0]


# -- cost per 1M tokens ------------------------------------------------------------------
def test_cost_measurement_is_the_reciprocal_of_the_log_throughput():
    tps = [100.0, 200.0, 400.0]
    rec = _rec("baseline", tps)
    m = cost_measurement(rec, CFG)
    k = 2.0 / 3600 * 1e6  # USD/h / (s/h) * 1e6 tokens
    assert m.samples == pytest.approx([k / t for t in tps])
    t = rec.get("decode.tokens_per_s")
    assert m.value == pytest.approx(k / t.value)  # geometric means: k / 200
    assert m.value == pytest.approx(k / 200.0)
    assert m.ci95 == pytest.approx([k / t.ci95[1], k / t.ci95[0]])
    assert m.status == "estimated" and m.unit == "USD/1M tokens" and not m.higher_is_better
    assert "2.0" in m.reason and "test box" in m.reason and "batch-1" in m.reason
    assert "geometric mean" in m.method


def test_cost_measurement_from_a_plain_measurement_and_a_single_value():
    plain = stats.measurement("decode.tokens_per_s", [9.0, 10.0, 11.0], "t", True, "t")
    no_samples = dict(name="decode.tokens_per_s@bs8", value=50.0, unit="t", higher_is_better=True)
    ms = [Measurement(**plain), Measurement(**no_samples, n=5)]
    rec = RunRecord(label="baseline", model={}, dtype="f", measurements=ms)
    assert cost_measurement(rec, CFG).value == pytest.approx(
        2.0 / 3600 * 1e6 / st.gmean([9.0, 10.0, 11.0])
    )
    one = cost_measurement(rec, CFG, "decode.tokens_per_s@bs8")  # samples not kept: the value
    assert one.name == COST_METRIC + "@bs8" and one.n == 1 and one.ci95 is None


def test_cost_measurements_per_batch_size():
    ms = cost_measurements(_rec("baseline", [10.0, 11.0], [60.0, 64.0]), CFG)
    assert [m.name for m in ms] == [COST_METRIC, COST_METRIC + "@bs8"]
    assert "batch-8" in ms[1].reason and "8 concurrent streams" in ms[1].reason
    assert ms[1].value < ms[0].value


def test_cost_measurement_unavailable_without_throughput():
    m = cost_measurement(_rec("baseline", None), CFG)
    assert m.value is None and m.status == "unavailable" and m.reason
    with pytest.raises(ValueError):
        cost_measurement(_rec("baseline", None), CFG, "prefill.tokens_per_s")


# -- the headline ------------------------------------------------------------------------
def test_no_measurable_quality_loss_headline_names_its_basis():
    comps = [
        _cmp(COST_METRIC, 0.5, 0.04),
        _cmp(QUALITY_METRIC, 1.004, 0.002, df=7, scale="perplexity"),
        _cmp("weights.bytes", 0.25, 0.0, scale="exact"),
    ]
    s = summarize(comps, CFG, basis=BASIS)
    assert s.cost_saving_fraction == pytest.approx(0.5)
    lo, hi = comps[0].ratio_ci95
    assert s.cost_saving_ci95 == pytest.approx([1 - hi, 1 - lo])
    assert s.quality_loss_fraction == pytest.approx(0.004)
    assert s.quality_loss_ci95[0] < 0 < s.quality_loss_ci95[1]
    assert s.saving_per_quality_loss is None and s.saving_per_quality_loss_ci95 is None
    assert s.memory_saving_fraction == pytest.approx(0.75)
    first = _first_sentence(s.headline)
    assert "at batch 1 (torch 2.13 eager on cpu; float32 -> bfloat16)" in first
    assert "-50.0% [95% CI" in first and "no measurable perplexity increase" in first
    assert "-75.0%" in s.headline
    assert s.batch_size == 1 and s.runtime == BASIS["runtime"] and s.dtype == BASIS["dtype"]
    assert "batch-1" in s.basis and "float32 -> bfloat16" in s.basis
    assert s.baseline_usd_per_million_tokens == 10.0
    assert s.compressed_usd_per_million_tokens == 5.0
    assert s.usd_per_device_hour == 2.0 and s.device_name == "test box"


def test_default_basis_is_batch_1():
    s = summarize([_cmp(COST_METRIC, 0.5, 0.04)], CFG)
    assert "at batch 1:" in _first_sentence(s.headline) and s.batch_size == 1


def test_significant_loss_gives_rate_with_bonferroni_corners():
    cost = _cmp(COST_METRIC, 0.6, 0.03)
    ppl = _cmp(QUALITY_METRIC, 1.02, 0.003, df=39, scale="perplexity")
    s = summarize([cost, ppl], CFG, basis=BASIS)
    assert s.quality_loss_fraction == pytest.approx(0.02)
    assert s.saving_per_quality_loss == pytest.approx(0.4 / 0.02)  # 20 points per point
    c_lo, c_hi = _adjusted(0.6, 0.03, 5)
    q_lo, q_hi = _adjusted(1.02, 0.003, 39)
    sav, loss = (1 - c_hi, 1 - c_lo), (q_lo - 1, q_hi - 1)
    corners = [a / b for a in sav for b in loss]
    assert s.saving_per_quality_loss_ci95 == pytest.approx([min(corners), max(corners)])
    assert s.saving_per_quality_loss_level == RATE_LEVEL == 0.975
    # wider than the 95% corners: each interval is at 97.5%
    assert s.saving_per_quality_loss_ci95[1] > (1 - cost.ratio_ci95[0]) / (ppl.ratio_ci95[0] - 1)
    assert "20 percentage points of cost saved per 1% perplexity increase" in s.headline
    assert "perplexity +2.0% [95% CI" in _first_sentence(s.headline)


def test_negative_saving_range_uses_the_right_corners():
    # cost up 5..10% (saving [-0.10, -0.05]) and perplexity up 80..160%: the rate is negative
    cost = _cmp(COST_METRIC, 1.075, 0.01)
    ppl = _cmp(QUALITY_METRIC, 2.2, 0.1, df=39, scale="perplexity")
    rate, rng = exchange_rate(cost, ppl)
    assert rate == pytest.approx(-0.075 / 1.2)
    c_lo, c_hi = _adjusted(1.075, 0.01, 5)
    q_lo, q_hi = _adjusted(2.2, 0.1, 39)
    assert rng == pytest.approx([(1 - c_hi) / (q_lo - 1), (1 - c_lo) / (q_hi - 1)])
    assert rng[0] < rate < rng[1] < 0
    # the review's intervals, corner by corner
    assert stats.quotient_range([-0.10, -0.05], [0.8, 1.6]) == pytest.approx([-0.125, -0.03125])


def test_zero_ends_give_no_rate():
    # the saving interval reaches 0: not significant, no rate
    cost = _cmp(COST_METRIC, 0.97, 0.013)
    assert cost.ratio_ci95[1] > 1
    ppl = _cmp(QUALITY_METRIC, 1.02, 0.003, df=39, scale="perplexity")
    s = summarize([cost, ppl], CFG)
    assert s.saving_per_quality_loss is None
    assert "cost change is not significant, so no exchange rate" in s.headline
    # the loss interval reaches 0: "no measurable perplexity increase", no rate, no 10^3 jump
    for se in (0.0095, 0.0099, 0.0101, 0.0105):
        ppl = _cmp(QUALITY_METRIC, 1.02, se, df=39, scale="perplexity")
        s = summarize([_cmp(COST_METRIC, 0.5, 0.03), ppl], CFG)
        if s.quality_loss_ci95[0] <= 0:
            assert s.saving_per_quality_loss is None
            assert "no measurable perplexity increase" in s.headline
        elif s.saving_per_quality_loss is None:  # significant at 95% but not at 97.5%
            assert "not both significant at the 97.5% level" in s.headline
        else:  # a rate only with a bounded, one-signed joint range: no jump to 10^3
            assert s.saving_per_quality_loss == pytest.approx(0.5 / 0.02)
            lo, hi = s.saving_per_quality_loss_ci95
            assert 0 < lo <= 25 <= hi < 1e3


def test_measurably_lower_perplexity_has_no_rate():
    s = summarize(
        [_cmp(COST_METRIC, 0.5, 0.03), _cmp(QUALITY_METRIC, 0.98, 0.003, scale="perplexity")], CFG
    )
    assert s.saving_per_quality_loss is None and "measurably lower" in s.headline


def test_rate_without_stderr_has_no_range():
    # a version-1 report: 95% intervals only, no stderr/df to recompute them at 97.5%
    cost = _cmp(COST_METRIC, 0.6, 0.03).model_copy(update={"log_ratio_stderr": None})
    ppl = _cmp(QUALITY_METRIC, 1.02, 0.003, scale="perplexity")
    s = summarize([cost, ppl], CFG)
    assert s.saving_per_quality_loss == pytest.approx(20.0)
    assert s.saving_per_quality_loss_ci95 is None and s.saving_per_quality_loss_level is None


def test_missing_cost_or_quality():
    s = summarize([_cmp(QUALITY_METRIC, 1.02, 0.003)], CFG)
    assert s.cost_saving_fraction is None and "could not be compared at batch 1" in s.headline
    s = summarize([_cmp(COST_METRIC, 0.5, 0.03)], CFG)
    assert s.quality_loss_fraction is None and "quality was not evaluated" in s.headline


def test_batch_8_saving_in_headline_and_by_batch():
    comps = [_cmp(COST_METRIC, 0.5, 0.03), _cmp(COST_METRIC + "@bs8", 0.3, 0.02)]
    s = summarize(comps, CFG, basis=BASIS)
    assert [b.batch_size for b in s.by_batch] == [1, 8]
    b8 = s.by_batch[1]
    assert b8.cost_saving_fraction == pytest.approx(0.7)
    assert b8.cost_saving_ci95 == pytest.approx([1 - r for r in reversed(comps[1].ratio_ci95)])
    assert "At batch 8: serving cost -70.0% [95% CI" in s.headline


def test_end_to_end_from_paired_run_records():
    b_tps, c_tps = [10.0, 10.5, 9.5, 10.2, 9.8], [20.0, 21.4, 18.8, 20.6, 19.4]
    base, comp = _rec("baseline", b_tps), _rec("compressed", c_tps)
    base.measurements += cost_measurements(base, CFG)
    comp.measurements += cost_measurements(comp, CFG)
    comps = compare(base, comp, {"decode.tokens_per_s": stats.Paired(b_tps, c_tps, "log")})
    s = summarize(comps, CFG)
    tps = next(c for c in comps if c.metric == "decode.tokens_per_s")
    assert s.cost_saving_fraction == pytest.approx(1 - 1 / tps.ratio)
    assert s.cost_saving_ci95 == pytest.approx([1 - 1 / r for r in tps.ratio_ci95])
    assert "quality was not evaluated" in s.headline


# -- coverage by simulation ----------------------------------------------------------------
def test_coverage_exchange_rate_corners_is_at_least_joint_95():
    rng = np.random.default_rng(21)
    draws, true_cost, shift = 1000, 0.6, 0.02
    true_rate = (1 - true_cost) / (math.exp(shift) - 1)
    rec = RunRecord(label="baseline", model={}, dtype="f", measurements=[
        Measurement(name=m, value=1.0, unit="u", higher_is_better=False, n=1)
        for m in (COST_METRIC, QUALITY_METRIC)
    ])  # fmt: skip
    covered = 0
    for _ in range(draws):
        drift = rng.normal(0, 0.2, 6)
        cb = np.exp(drift + rng.normal(0, 0.04, 6))
        cc = true_cost * np.exp(drift + rng.normal(0, 0.04, 6))
        nb = rng.normal(2.5, 0.3, 8)
        nc = nb + shift + rng.normal(0, 0.01, 8)
        comps = compare(rec, rec, {
            COST_METRIC: stats.Paired(cb, cc, "log"),
            QUALITY_METRIC: stats.Paired(nb, nc, "perplexity"),
        })  # fmt: skip
        rate, rng_ci = exchange_rate(*comps)
        covered += rng_ci is not None and rng_ci[0] <= true_rate <= rng_ci[1]
    assert covered / draws >= 0.93

"""compress.gate: pass / fail / inconclusive from intervals, and the exit code."""

from __future__ import annotations

import pytest

from compress import stats
from compress.errors import EXIT_GATE_FAILED, EXIT_INCONCLUSIVE, EXIT_OK
from compress.gate import check, check_gate, exit_code
from compress.recipe import Gate
from compress.report.compare import compare
from compress.report.schema import Comparison, GateResult, Measurement, RunRecord

PPL = "wikitext2.perplexity"


def _cmp(metric=PPL, baseline=10.0, ratio=1.02, ratio_ci=(1.01, 1.03), higher=False, **kw):
    compressed = baseline * ratio if ratio is not None else None
    fields = dict(
        metric=metric,
        unit="u",
        higher_is_better=higher,
        baseline=baseline,
        compressed=compressed,
        delta=compressed - baseline if compressed is not None else None,
        delta_ci95=None,
        ratio=ratio,
        ratio_ci95=list(ratio_ci) if ratio_ci else None,
        paired=True,
        verdict="worse",
    )
    fields.update(kw)
    return Comparison(**fields)


def _rec(*measurements: dict) -> RunRecord:
    return RunRecord(
        label="compressed",
        model={},
        dtype="bfloat16",
        measurements=[Measurement(**m) for m in measurements],
    )


EMPTY = _rec()


@pytest.mark.parametrize(
    ("ratio_ci", "status"),
    [
        ((1.01, 1.03), "pass"),  # whole interval under +5%
        ((1.06, 1.09), "fail"),  # whole interval over
        ((1.03, 1.07), "inconclusive"),  # straddles 1.05
        ((0.97, 1.04), "pass"),  # an interval reaching into improvement still passes
    ],
)
def test_max_relative_increase(ratio_ci, status):
    ratio = sum(ratio_ci) / 2
    g = Gate(metric=PPL, max_relative_increase=0.05)
    r = check_gate(g, _cmp(ratio=ratio, ratio_ci=ratio_ci), EMPTY)
    assert r.status == status
    assert r.observed == pytest.approx(ratio - 1)
    assert r.interval == pytest.approx([x - 1 for x in ratio_ci])
    assert r.kind == "max_relative_increase" and r.threshold == 0.05


def test_max_relative_increase_falls_back_to_delta_interval():
    c = _cmp(ratio=1.02, ratio_ci=None, delta_ci95=[0.1, 0.3])  # baseline 10
    r = check_gate(Gate(metric=PPL, max_relative_increase=0.05), c, EMPTY)
    assert r.interval == pytest.approx([0.01, 0.03]) and r.status == "pass"
    r = check_gate(Gate(metric=PPL, max_relative_increase=0.02), c, EMPTY)
    assert r.status == "inconclusive"


def test_no_interval_uses_the_point():
    c = _cmp(ratio=1.02, ratio_ci=None)
    assert check_gate(Gate(metric=PPL, max_relative_increase=0.05), c, EMPTY).status == "pass"
    assert check_gate(Gate(metric=PPL, max_relative_increase=0.01), c, EMPTY).status == "fail"


@pytest.mark.parametrize(
    ("ratio_ci", "status"),
    [((1.6, 2.4), "pass"), ((1.1, 1.4), "fail"), ((1.3, 1.7), "inconclusive")],
)
def test_min_ratio(ratio_ci, status):
    c = _cmp("decode.tokens_per_s", ratio=sum(ratio_ci) / 2, ratio_ci=ratio_ci, higher=True)
    r = check_gate(Gate(metric="decode.tokens_per_s", min_ratio=1.5), c, EMPTY)
    assert r.status == status and r.interval == list(ratio_ci)


@pytest.mark.parametrize(("ratio", "status"), [(0.26, "pass"), (0.4, "fail")])
def test_max_ratio_on_exact_bytes(ratio, status):
    b = stats.exact("weights.bytes", 1000, "bytes", False, "counted")
    c = stats.exact("weights.bytes", 1000 * ratio, "bytes", False, "counted")
    base = RunRecord(label="baseline", model={}, dtype="f", measurements=[Measurement(**b)])
    comp = _rec(c)
    comps = compare(base, comp)
    (r,) = check([Gate(metric="weights.bytes", max_ratio=0.35)], comps, comp)
    assert r.status == status and r.interval == pytest.approx([ratio, ratio])


def test_max_increase_uses_delta():
    c = _cmp(ratio=1.02, delta_ci95=[0.1, 0.3])
    assert check_gate(Gate(metric=PPL, max_increase=0.5), c, EMPTY).status == "pass"
    assert check_gate(Gate(metric=PPL, max_increase=0.05), c, EMPTY).status == "fail"
    assert check_gate(Gate(metric=PPL, max_increase=0.2), c, EMPTY).status == "inconclusive"


def _kld(value, ci):
    return stats.mean_measurement(
        "kld.mean", [value - 0.001, value + 0.001], "nats", False, "w"
    ) | {
        "value": value,
        "ci95": ci,
    }


@pytest.mark.parametrize(
    ("ci", "status"),
    [([0.01, 0.02], "pass"), ([0.06, 0.08], "fail"), ([0.04, 0.06], "inconclusive")],
)
def test_max_value(ci, status):
    rec = _rec(_kld(sum(ci) / 2, ci))
    r = check_gate(Gate(metric="kld.mean", max_value=0.05), None, rec)
    assert r.status == status and r.interval == ci
    assert r.observed == pytest.approx(sum(ci) / 2)


@pytest.mark.parametrize(
    ("ci", "status"), [([0.95, 0.99], "pass"), ([0.5, 0.8], "fail"), ([0.85, 0.95], "inconclusive")]
)
def test_min_value(ci, status):
    m = stats.mean_measurement("kld.top1_agreement", [0.9, 0.9], "fraction", True, "w")
    rec = _rec(m | {"value": sum(ci) / 2, "ci95": ci})
    r = check_gate(Gate(metric="kld.top1_agreement", min_value=0.9), None, rec)
    assert r.status == status


def test_unavailable_metrics_are_inconclusive():
    gone = stats.unavailable("energy.joules_per_token", "J", False, "no RAPL counters")
    rec = _rec(gone)
    r = check_gate(Gate(metric="energy.joules_per_token", max_value=1.0), None, rec)
    assert r.status == "inconclusive" and "no RAPL counters" in r.explanation
    assert r.observed is None
    r = check_gate(Gate(metric="kld.mean", max_value=1.0), None, EMPTY)
    assert r.status == "inconclusive" and "not measured" in r.explanation
    r = check_gate(Gate(metric=PPL, max_relative_increase=0.05), None, EMPTY)
    assert r.status == "inconclusive"
    unknown = _cmp(ratio=None, ratio_ci=None, verdict="unknown", method="eval skipped")
    r = check_gate(Gate(metric=PPL, max_relative_increase=0.05), unknown, EMPTY)
    assert r.status == "inconclusive" and "eval skipped" in r.explanation


def test_check_matches_gates_to_comparisons_by_metric():
    comps = [
        _cmp(ratio=1.02, ratio_ci=(1.01, 1.03)),
        _cmp("decode.tokens_per_s", ratio=2.0, ratio_ci=(1.8, 2.2), higher=True),
    ]
    gates = [
        Gate(metric="decode.tokens_per_s", min_ratio=1.5),
        Gate(metric=PPL, max_relative_increase=0.01),
    ]
    rs = check(gates, comps, EMPTY)
    assert [(r.metric, r.status) for r in rs] == [
        ("decode.tokens_per_s", "pass"),
        (PPL, "fail"),
    ]


def _res(status: str) -> GateResult:
    return GateResult(
        metric=PPL, kind="max_value", threshold=1, status=status, observed=None, interval=None,
        explanation="",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        ([], EXIT_OK),
        (["pass", "pass"], EXIT_OK),
        (["pass", "inconclusive"], EXIT_INCONCLUSIVE),
        (["inconclusive", "fail", "pass"], EXIT_GATE_FAILED),
        (["fail"], EXIT_GATE_FAILED),
    ],
)
def test_exit_code(statuses, code):
    assert exit_code([_res(s) for s in statuses]) == code
    assert (EXIT_OK, EXIT_GATE_FAILED, EXIT_INCONCLUSIVE) == (0, 1, 3)

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


def test_max_relative_increase_needs_the_ratio_interval():
    # a delta interval over the baseline ignores the baseline's own uncertainty: not used
    c = _cmp(ratio=1.02, ratio_ci=None, delta_ci95=[0.1, 0.3])
    r = check_gate(Gate(metric=PPL, max_relative_increase=0.05), c, EMPTY)
    assert r.status == "inconclusive" and r.interval is None
    assert "no 95% interval" in r.explanation


@pytest.mark.parametrize("kind", ["max_relative_increase", "max_ratio", "max_increase"])
def test_no_interval_is_inconclusive_never_the_point(kind):
    c = _cmp(ratio=1.02, ratio_ci=None, method="1 windows: no interval")
    thr = {"max_relative_increase": 0.05, "max_ratio": 1.05, "max_increase": 5.0}[kind]
    r = check_gate(Gate(metric=PPL, **{kind: thr}), c, EMPTY)
    assert r.status == "inconclusive"  # the point (1.02) is well inside: still no verdict
    assert r.observed is not None and r.interval is None
    assert "1 windows: no interval" in r.explanation


def test_nll_max_ratio_is_decided_on_the_paired_ratio_interval():
    """Review point 5: max_ratio 1.0005 with a delta CI of [-0.01, 0.02] used to FAIL on the
    point; the paired nll comparison now has a ratio interval, and it straddles."""
    nb = [2.00, 2.20, 1.90, 2.10, 2.05, 1.95]
    nc = [2.00, 2.23, 1.90, 2.09, 2.08, 1.95]
    mb = stats.mean_measurement("wikitext2.nll", nb, "nats/token", False, "w")
    mc = stats.mean_measurement("wikitext2.nll", nc, "nats/token", False, "w")
    base = RunRecord(label="baseline", model={}, dtype="f", measurements=[Measurement(**mb)])
    comp = _rec(mc)
    comps = compare(base, comp, {"wikitext2.nll": stats.Paired(nb, nc, "mean")})
    (c,) = comps
    assert c.delta_ci95[0] < 0 < c.delta_ci95[1] and c.ratio > 1.0005
    (r,) = check([Gate(metric="wikitext2.nll", max_ratio=1.0005)], comps, comp)
    assert r.status == "inconclusive" and r.interval == c.ratio_ci95
    (r,) = check([Gate(metric="wikitext2.nll", max_ratio=1.05)], comps, comp)
    assert r.status == "pass"
    (r,) = check([Gate(metric="wikitext2.nll", max_relative_increase=0.0005)], comps, comp)
    assert r.status == "inconclusive"


def test_perplexity_gate_from_paired_windows():
    nb = [2.0, 2.2, 1.9, 2.1]
    nc = [2.05, 2.24, 1.96, 2.13]
    ppl = [stats.mean_measurement("wikitext2.perplexity", x, "perplexity", False, "w")
           for x in (nb, nc)]  # fmt: skip
    base = RunRecord(label="baseline", model={}, dtype="f", measurements=[Measurement(**ppl[0])])
    comp = _rec(ppl[1])
    comps = compare(base, comp, {PPL: (nb, nc)})
    (r,) = check([Gate(metric=PPL, max_relative_increase=0.10)], comps, comp)
    assert r.status == "pass" and 0 < r.interval[0] < r.observed < r.interval[1] < 0.10
    (r,) = check([Gate(metric=PPL, max_relative_increase=0.01)], comps, comp)
    assert r.status == "fail"


def test_speed_gates_from_log_paired_processes():
    b, c = [30.0, 29.0, 31.5, 30.2, 28.9], [60.5, 57.0, 64.1, 61.0, 57.5]
    ms = [stats.log_measurement("decode.tokens_per_s", x, "tokens/s", True, "p") for x in (b, c)]
    base = RunRecord(label="baseline", model={}, dtype="f", measurements=[Measurement(**ms[0])])
    comp = _rec(ms[1])
    comps = compare(base, comp, {"decode.tokens_per_s": stats.Paired(b, c, "log")})
    (r,) = check([Gate(metric="decode.tokens_per_s", min_ratio=1.5)], comps, comp)
    assert r.status == "pass" and r.interval == comps[0].ratio_ci95
    (r,) = check([Gate(metric="decode.tokens_per_s", min_ratio=2.5)], comps, comp)
    assert r.status == "fail"
    (r,) = check([Gate(metric="decode.tokens_per_s", min_value=40.0)], comps, comp)
    assert r.status == "pass" and r.interval == comp.get("decode.tokens_per_s").ci95


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
    ) | {"value": value, "ci95": ci}


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


def test_kld_max_value_on_real_windows_and_relative_only():
    """kld.mean is relative-only (no comparison): max_value is decided on its own interval."""
    kld = stats.mean_measurement("kld.mean", [0.004, 0.006, 0.005, 0.007], "nats", False, "w")
    base = RunRecord(label="baseline", model={}, dtype="f", measurements=[Measurement(**kld)])
    comp = _rec(kld)
    comps = compare(base, comp)
    assert comps == []
    (r,) = check([Gate(metric="kld.mean", max_value=0.02)], comps, comp)
    assert r.status == "pass" and r.interval == kld["ci95"]
    (r,) = check([Gate(metric="kld.mean", max_value=0.001)], comps, comp)
    assert r.status == "fail"


def test_value_gate_without_interval_is_inconclusive_unless_exact():
    one = stats.mean_measurement("kld.mean", [0.01], "nats", False, "one window")
    r = check_gate(Gate(metric="kld.mean", max_value=0.02), None, _rec(one))
    assert r.status == "inconclusive" and r.observed == 0.01 and "no 95% interval" in r.explanation
    flat = stats.mean_measurement("kld.mean", [0.0, 0.0, 0.0], "nats", False, "w")
    r = check_gate(Gate(metric="kld.mean", max_value=0.02), None, _rec(flat))
    assert r.status == "inconclusive" and "zero spread" in r.explanation
    counted = stats.exact("disk.artifact_bytes", 1000, "bytes", False, "counted")
    r = check_gate(Gate(metric="disk.artifact_bytes", max_value=2000), None, _rec(counted))
    assert r.status == "pass" and r.interval == [1000.0, 1000.0]


def test_every_metric_family_gets_a_decision_from_its_interval():
    fams = {
        "prefill.latency_ms": ("max_ratio", 0.9, [0.6, 0.8], "pass"),
        "memory.peak_rss_bytes": ("max_ratio", 0.5, [0.55, 0.7], "fail"),
        "energy.joules_per_token": ("max_ratio", 0.8, [0.7, 0.9], "inconclusive"),
        "cost.usd_per_million_tokens": ("max_ratio", 0.7, [0.4, 0.6], "pass"),
        "prefill.tokens_per_s": ("min_ratio", 1.2, [1.3, 1.6], "pass"),
        "disk.artifact_bytes": ("max_ratio", 0.3, [0.4, 0.4], "fail"),
    }
    for metric, (kind, thr, ci, status) in fams.items():
        higher = kind == "min_ratio"
        c = _cmp(metric, ratio=sum(ci) / 2, ratio_ci=ci, higher=higher)
        r = check_gate(Gate(metric=metric, **{kind: thr}), c, EMPTY)
        assert r.status == status, metric
        assert check_gate(Gate(metric=metric, **{kind: thr}), c.model_copy(
            update={"ratio_ci95": None}), EMPTY).status == "inconclusive"  # fmt: skip


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

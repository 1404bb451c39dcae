"""compress.report.compare: paired, exact and independent comparisons and their verdicts."""

from __future__ import annotations

import math

import pytest

from compress import stats
from compress.report.compare import compare
from compress.report.schema import Measurement, RunRecord

NLL_BASE = [2.0, 2.2, 1.9, 2.1]
NLL_COMP = [2.05, 2.24, 1.96, 2.13]  # diffs 0.05, 0.04, 0.06, 0.03: a clear, tight increase


def _ppl(nll: list[float]) -> Measurement:
    m = stats.mean_measurement("wikitext2.nll", nll, "nats/token", False, "w")
    return Measurement(
        **dict(
            m,
            name="wikitext2.perplexity",
            unit="perplexity",
            value=math.exp(m["value"]),
            samples=[math.exp(x) for x in nll],
            ci95=[math.exp(c) for c in m["ci95"]],
        )
    )


def _record(label: str, measurements: list[dict | Measurement]) -> RunRecord:
    ms = [m if isinstance(m, Measurement) else Measurement(**m) for m in measurements]
    return RunRecord(label=label, model={"spec": "tiny"}, dtype="float32", measurements=ms)


def _one(comps, metric):
    (c,) = [c for c in comps if c.metric == metric]
    return c


def test_paired_perplexity_ratio_is_exp_mean_nll_diff():
    base = _record("baseline", [_ppl(NLL_BASE)])
    comp = _record("compressed", [_ppl(NLL_COMP)])
    comps = compare(base, comp, {"wikitext2.perplexity": (NLL_BASE, NLL_COMP)})
    c = _one(comps, "wikitext2.perplexity")
    d, _, dci = stats.paired_diff(NLL_BASE, NLL_COMP)
    assert d == pytest.approx(0.045)
    assert c.paired is True
    assert c.ratio == pytest.approx(math.exp(0.045))
    assert c.ratio == pytest.approx(c.compressed / c.baseline)
    assert c.ratio_ci95 == pytest.approx([math.exp(dci[0]), math.exp(dci[1])])
    assert 1 < c.ratio_ci95[0] < c.ratio < c.ratio_ci95[1]
    assert c.delta == pytest.approx(c.compressed - c.baseline)
    assert c.delta_ci95 == pytest.approx([c.baseline * (r - 1) for r in c.ratio_ci95])
    assert c.verdict == "worse"  # lower is better, interval entirely above 0
    # unpaired, the same numbers would give a much wider interval
    unpaired = _one(compare(base, comp), "wikitext2.perplexity")
    assert unpaired.paired is False
    width = c.ratio_ci95[1] - c.ratio_ci95[0]
    assert unpaired.ratio_ci95[1] - unpaired.ratio_ci95[0] > 5 * width
    assert unpaired.verdict == "no significant change"


def test_paired_noisy_difference_is_no_significant_change():
    comp_nll = [2.1, 2.1, 2.0, 2.0]  # diffs +0.1, -0.1, +0.1, -0.1
    base = _record("baseline", [_ppl(NLL_BASE)])
    comp = _record("compressed", [_ppl(comp_nll)])
    c = _one(
        compare(base, comp, {"wikitext2.perplexity": (NLL_BASE, comp_nll)}), "wikitext2.perplexity"
    )
    assert c.ratio == pytest.approx(1.0)
    assert c.ratio_ci95[0] < 1 < c.ratio_ci95[1]
    assert c.verdict == "no significant change"


def test_paired_non_perplexity_is_mean_difference():
    b = stats.mean_measurement("wikitext2.nll", NLL_BASE, "nats/token", False, "w")
    c = stats.mean_measurement("wikitext2.nll", NLL_COMP, "nats/token", False, "w")
    comps = compare(
        _record("baseline", [b]),
        _record("compressed", [c]),
        {"wikitext2.nll": (NLL_BASE, NLL_COMP)},
    )
    x = _one(comps, "wikitext2.nll")
    d, _, dci = stats.paired_diff(NLL_BASE, NLL_COMP)
    assert x.delta == pytest.approx(d) and x.delta_ci95 == pytest.approx(list(dci))
    assert x.ratio == pytest.approx(c["value"] / b["value"]) and x.ratio_ci95 is None
    assert x.verdict == "worse"


def test_exact_bytes_ratio_interval_is_a_point():
    b = stats.exact("weights.bytes", 1000, "bytes", False, "counted")
    c = stats.exact("weights.bytes", 260, "bytes", False, "counted")
    x = _one(compare(_record("baseline", [b]), _record("compressed", [c])), "weights.bytes")
    assert x.ratio == pytest.approx(0.26) and x.ratio_ci95 == pytest.approx([0.26, 0.26])
    assert x.delta == -740 and x.delta_ci95 == [-740, -740]
    assert x.verdict == "better" and x.paired is False
    same = _one(compare(_record("baseline", [b]), _record("compressed", [b])), "weights.bytes")
    assert same.verdict == "no significant change"


def test_independent_speed_samples_ratio_ci():
    bs, cs = [10.0, 11.0, 9.0, 10.5, 9.5], [20.0, 21.0, 19.0, 22.0, 18.0]
    b = stats.measurement("decode.tokens_per_s", bs, "tokens/s", True, "timed")
    c = stats.measurement("decode.tokens_per_s", cs, "tokens/s", True, "timed")
    x = _one(compare(_record("baseline", [b]), _record("compressed", [c])), "decode.tokens_per_s")
    r, rci = stats.log_ratio_ci(bs, cs)
    assert x.ratio == pytest.approx(r) == pytest.approx(2.0)
    assert x.ratio_ci95 == pytest.approx(list(rci))
    assert x.ratio_ci95[0] > 1
    assert x.delta == pytest.approx(10.0)  # delta of means
    assert x.delta_ci95[0] > 0
    assert x.verdict == "better"
    slower = stats.measurement("decode.tokens_per_s", [5.0, 5.2, 4.8], "tokens/s", True, "t")
    y = _one(
        compare(_record("baseline", [b]), _record("compressed", [slower])), "decode.tokens_per_s"
    )
    assert y.verdict == "worse" and y.ratio_ci95[1] < 1
    overlap = stats.measurement("decode.tokens_per_s", [9.0, 12.0, 10.0], "tokens/s", True, "t")
    z = _one(
        compare(_record("baseline", [b]), _record("compressed", [overlap])), "decode.tokens_per_s"
    )
    assert z.verdict == "no significant change"
    assert z.ratio_ci95[0] < 1 < z.ratio_ci95[1]


def test_unavailable_relative_only_and_missing_metrics():
    b_lat = stats.measurement("prefill.latency_ms", [3.0, 3.1], "ms", False, "t")
    c_lat = stats.unavailable("prefill.latency_ms", "ms", False, "worker crashed")
    kld = stats.mean_measurement("kld.mean", [0.01, 0.02], "nats/token", False, "w")
    only_base = stats.exact("disk.artifact_bytes", 10, "bytes", False, "c")
    comps = compare(
        _record("baseline", [b_lat, kld, only_base]), _record("compressed", [c_lat, kld])
    )
    assert [c.metric for c in comps] == ["prefill.latency_ms"]
    c = comps[0]
    assert c.verdict == "unknown" and c.delta is None and c.ratio is None
    assert c.method == "worker crashed"

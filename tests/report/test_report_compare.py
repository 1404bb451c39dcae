"""compress.report.compare: paired (log, perplexity, mean), exact and independent comparisons,
their verdicts, and the coverage of every interval they produce, by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from compress import stats
from compress.report.compare import compare
from compress.report.schema import Comparison, Measurement, RunRecord

NLL_BASE = [2.0, 2.2, 1.9, 2.1]
NLL_COMP = [2.05, 2.24, 1.96, 2.13]  # diffs 0.05, 0.04, 0.06, 0.03: a clear, tight increase
DRAWS = 2000


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


def _one(comps, metric) -> Comparison:
    (c,) = [c for c in comps if c.metric == metric]
    return c


def _log_pair(name: str, b, c, unit="tokens/s", higher=True) -> Comparison:
    """One log-paired comparison from per-process samples."""
    mb = stats.log_measurement(name, b, unit, higher, "per process")
    mc = stats.log_measurement(name, c, unit, higher, "per process")
    comps = compare(
        _record("baseline", [mb]), _record("compressed", [mc]), {name: stats.Paired(b, c, "log")}
    )
    return _one(comps, name)


# -- log-paired (per-process) -------------------------------------------------------------
TPS_B = [30.1, 28.7, 31.5, 29.9, 27.8, 30.6, 29.2]
TPS_C = [61.0, 57.1, 64.2, 59.5, 57.0, 60.9, 59.8]


def test_log_paired_ratio_is_exp_mean_log_ratio_and_columns_are_geometric_means():
    x = _log_pair("decode.tokens_per_s", TPS_B, TPS_C)
    d = np.log(TPS_C) - np.log(TPS_B)
    se = d.std(ddof=1) / math.sqrt(len(d))
    h = st.t.ppf(0.975, len(d) - 1) * se
    assert x.paired is True and x.scale == "log" and x.n == 7 and x.df == 6
    assert x.ratio == pytest.approx(math.exp(d.mean()))
    assert x.ratio_ci95 == pytest.approx([math.exp(d.mean() - h), math.exp(d.mean() + h)])
    assert x.baseline == pytest.approx(st.gmean(TPS_B))
    assert x.compressed == pytest.approx(st.gmean(TPS_C))
    assert x.compressed / x.baseline == pytest.approx(x.ratio, rel=1e-12)
    assert x.delta == pytest.approx(x.compressed - x.baseline)
    assert x.delta_ci95 == pytest.approx([x.baseline * (r - 1) for r in x.ratio_ci95])
    assert x.log_ratio_stderr == pytest.approx(se)
    assert x.delta_stderr == pytest.approx(x.baseline * x.ratio * se)
    assert x.verdict == "better"
    # n >= 6: the Hodges-Lehmann check is recorded, the t-based ratio stays primary
    assert "Hodges-Lehmann" in x.method and "Wilcoxon" in x.method
    hl, _, _ = stats.hodges_lehmann(d)
    assert f"{math.exp(hl):.4g}" in x.method


def test_log_paired_throughput_and_latency_ratios_are_reciprocal():
    k = 1000.0  # latency (ms/token) = k / tokens_per_s, sample by sample
    tps = _log_pair("decode.tokens_per_s", TPS_B, TPS_C)
    lat = _log_pair(
        "decode.latency_ms_per_token",
        [k / t for t in TPS_B],
        [k / t for t in TPS_C],
        unit="ms",
        higher=False,
    )
    assert tps.ratio * lat.ratio == pytest.approx(1.0, rel=1e-12)
    assert tps.ratio_ci95[0] * lat.ratio_ci95[1] == pytest.approx(1.0)
    assert tps.ratio_ci95[1] * lat.ratio_ci95[0] == pytest.approx(1.0)
    assert tps.baseline * lat.baseline == pytest.approx(k)
    assert lat.verdict == "better"  # lower latency


def test_log_paired_few_pairs_have_no_hodges_lehmann_and_one_pair_no_interval():
    x = _log_pair("decode.tokens_per_s", TPS_B[:3], TPS_C[:3])
    assert x.ratio_ci95 is not None and "Hodges-Lehmann" not in x.method
    one = _log_pair("decode.tokens_per_s", TPS_B[:1], TPS_C[:1])
    assert one.ratio == pytest.approx(TPS_C[0] / TPS_B[0])
    assert one.ratio_ci95 is None and one.delta_ci95 is None and "no interval" in one.method
    assert one.verdict == "unknown"


def test_log_paired_zero_spread_gives_no_interval():
    x = _log_pair("memory.peak_rss_bytes", [100.0, 200.0, 300.0], [50.0, 100.0, 150.0], "bytes")
    assert x.ratio == pytest.approx(0.5)
    assert x.ratio_ci95 is None and "zero spread" in x.method


def test_cost_follows_the_pairing_of_decode_throughput():
    from compress.cost import cost_measurement
    from compress.recipe import CostConfig

    cfg = CostConfig(usd_per_device_hour=2.0)
    recs = []
    for label, xs in (("baseline", TPS_B), ("compressed", TPS_C)):
        r = _record(label, [stats.log_measurement("decode.tokens_per_s", xs, "t/s", True, "p")])
        r.measurements.append(cost_measurement(r, cfg))
        recs.append(r)
    comps = compare(*recs, {"decode.tokens_per_s": stats.Paired(TPS_B, TPS_C, "log")})
    tps, cost = _one(comps, "decode.tokens_per_s"), _one(comps, "cost.usd_per_million_tokens")
    assert cost.paired and cost.scale == "log"
    assert cost.ratio * tps.ratio == pytest.approx(1.0, rel=1e-12)
    assert cost.ratio_ci95[0] * tps.ratio_ci95[1] == pytest.approx(1.0)
    assert cost.log_ratio_stderr == pytest.approx(tps.log_ratio_stderr)
    assert cost.baseline == pytest.approx(recs[0].get("cost.usd_per_million_tokens").value)
    # the pairs, not the order the samples were stored in, decide the pairing
    order = [3, 0, 6, 1, 5, 2, 4]
    shuffled = stats.Paired([TPS_B[i] for i in order], [TPS_C[i] for i in order], "log")
    again = _one(compare(*recs, {"decode.tokens_per_s": shuffled}), "cost.usd_per_million_tokens")
    assert again.ratio_ci95 == pytest.approx(cost.ratio_ci95)


# -- perplexity and nll (per window) ------------------------------------------------------
def test_paired_perplexity_ratio_is_exp_mean_nll_diff():
    base = _record("baseline", [_ppl(NLL_BASE)])
    comp = _record("compressed", [_ppl(NLL_COMP)])
    comps = compare(base, comp, {"wikitext2.perplexity": (NLL_BASE, NLL_COMP)})
    c = _one(comps, "wikitext2.perplexity")
    d, se, dci = stats.paired_diff(NLL_BASE, NLL_COMP)
    assert d == pytest.approx(0.045)
    assert c.paired is True and c.scale == "perplexity" and c.df == 3 and c.n == 4
    assert c.ratio == pytest.approx(math.exp(0.045))
    assert c.ratio == pytest.approx(c.compressed / c.baseline)
    assert c.baseline == pytest.approx(base.measurements[0].value)
    assert c.ratio_ci95 == pytest.approx([math.exp(dci[0]), math.exp(dci[1])])
    assert c.log_ratio_stderr == pytest.approx(se)
    assert 1 < c.ratio_ci95[0] < c.ratio < c.ratio_ci95[1]
    assert c.delta_ci95 == pytest.approx([c.baseline * (r - 1) for r in c.ratio_ci95])
    assert c.verdict == "worse"  # lower is better, interval entirely above 0
    # unpaired, the same numbers give a much wider interval (Welch on the window NLLs)
    unpaired = _one(compare(base, comp), "wikitext2.perplexity")
    assert unpaired.paired is False and unpaired.scale == "log"
    assert unpaired.ratio == pytest.approx(c.ratio)  # geometric mean of exp(nll) = exp(mean)
    width = c.ratio_ci95[1] - c.ratio_ci95[0]
    assert unpaired.ratio_ci95[1] - unpaired.ratio_ci95[0] > 5 * width
    assert unpaired.verdict == "no significant change"


def test_paired_noisy_difference_is_no_significant_change():
    comp_nll = [2.1, 2.1, 2.0, 2.0]  # diffs +0.1, -0.1, +0.1, -0.1
    c = _one(
        compare(
            _record("baseline", [_ppl(NLL_BASE)]),
            _record("compressed", [_ppl(comp_nll)]),
            {"wikitext2.perplexity": stats.Paired(NLL_BASE, comp_nll, "perplexity")},
        ),
        "wikitext2.perplexity",
    )
    assert c.ratio == pytest.approx(1.0)
    assert c.ratio_ci95[0] < 1 < c.ratio_ci95[1]
    assert c.verdict == "no significant change"


def test_paired_nll_has_a_fieller_ratio_interval():
    b = stats.mean_measurement("wikitext2.nll", NLL_BASE, "nats/token", False, "w")
    c = stats.mean_measurement("wikitext2.nll", NLL_COMP, "nats/token", False, "w")
    x = _one(
        compare(
            _record("baseline", [b]),
            _record("compressed", [c]),
            {"wikitext2.nll": (NLL_BASE, NLL_COMP)},  # legacy tuple: "mean" scale
        ),
        "wikitext2.nll",
    )
    d, se, dci = stats.paired_diff(NLL_BASE, NLL_COMP)
    assert x.scale == "mean" and x.paired
    assert x.delta == pytest.approx(d) and x.delta_ci95 == pytest.approx(list(dci))
    assert x.delta_stderr == pytest.approx(se)
    assert x.ratio == pytest.approx(c["value"] / b["value"])
    assert x.ratio == pytest.approx(x.compressed / x.baseline)
    lo, hi = x.ratio_ci95
    assert 1 < lo < x.ratio < hi
    # Fieller: the ends solve (mc - r mb)^2 = t^2 var(mc - r mb) over the paired windows
    nb, nc = np.array(NLL_BASE), np.array(NLL_COMP)
    t = st.t.ppf(0.975, 3)
    for r in (lo, hi):
        e = nc - r * nb
        assert e.mean() ** 2 == pytest.approx(t * t * e.var(ddof=1) / 4)
    assert x.verdict == "worse"


def test_nll_ratio_interval_straddling_1_matches_delta_interval_straddling_0():
    comp_nll = [2.02, 2.18, 1.93, 2.09]  # diffs +0.02, -0.02, +0.03, -0.01
    b = stats.mean_measurement("wikitext2.nll", NLL_BASE, "nats/token", False, "w")
    c = stats.mean_measurement("wikitext2.nll", comp_nll, "nats/token", False, "w")
    pair = {"wikitext2.nll": stats.Paired(NLL_BASE, comp_nll, "mean")}
    x = _one(compare(_record("baseline", [b]), _record("compressed", [c]), pair), "wikitext2.nll")
    assert x.delta_ci95[0] < 0 < x.delta_ci95[1]
    assert x.ratio_ci95[0] < 1 < x.ratio_ci95[1]
    assert x.verdict == "no significant change"


def test_bad_paired_input():
    b = _record("baseline", [_ppl(NLL_BASE)])
    with pytest.raises(ValueError, match="scale"):
        compare(b, b, {"wikitext2.perplexity": stats.Paired(NLL_BASE, NLL_BASE, "median")})
    with pytest.raises(ValueError, match="equal"):
        compare(b, b, {"wikitext2.perplexity": (NLL_BASE, NLL_BASE[:2])})


# -- unpaired ----------------------------------------------------------------------------
def test_exact_bytes_ratio_interval_is_a_point():
    b = stats.exact("weights.bytes", 1000, "bytes", False, "counted")
    c = stats.exact("weights.bytes", 260, "bytes", False, "counted")
    x = _one(compare(_record("baseline", [b]), _record("compressed", [c])), "weights.bytes")
    assert x.ratio == pytest.approx(0.26) and x.ratio_ci95 == pytest.approx([0.26, 0.26])
    assert x.delta == -740 and x.delta_ci95 == [-740, -740]
    assert x.scale == "exact" and x.delta_stderr == 0.0 and x.log_ratio_stderr == 0.0
    assert x.verdict == "better" and x.paired is False
    same = _one(compare(_record("baseline", [b]), _record("compressed", [b])), "weights.bytes")
    assert same.verdict == "no significant change"


def test_independent_speed_samples_use_geometric_means_and_welch_on_logs():
    bs, cs = [10.0, 11.0, 9.0, 10.5, 9.5], [20.0, 21.0, 19.0, 22.0, 18.0]
    b = stats.log_measurement("decode.tokens_per_s", bs, "tokens/s", True, "timed")
    c = stats.log_measurement("decode.tokens_per_s", cs, "tokens/s", True, "timed")
    x = _one(compare(_record("baseline", [b]), _record("compressed", [c])), "decode.tokens_per_s")
    lb, lc = np.log(bs), np.log(cs)
    vb, vc = lb.var(ddof=1) / 5, lc.var(ddof=1) / 5
    df = (vb + vc) ** 2 / (vb**2 / 4 + vc**2 / 4)
    h = st.t.ppf(0.975, df) * math.sqrt(vb + vc)
    r = math.exp(lc.mean() - lb.mean())
    assert x.paired is False and x.scale == "log" and x.df == pytest.approx(df)
    assert x.baseline == pytest.approx(b["value"]) and x.compressed == pytest.approx(c["value"])
    assert x.ratio == pytest.approx(r) and x.ratio == pytest.approx(x.compressed / x.baseline)
    assert x.ratio_ci95 == pytest.approx([r * math.exp(-h), r * math.exp(h)])
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


def test_independent_single_reading_has_no_interval():
    b = stats.measurement("energy.joules_per_token", [0.5], "J/token", False, "t")
    c = stats.measurement("energy.joules_per_token", [0.3, 0.31], "J/token", False, "t")
    x = _one(
        compare(_record("baseline", [b]), _record("compressed", [c])), "energy.joules_per_token"
    )
    assert x.ratio == pytest.approx(0.61 / 2 / 0.5)
    assert x.ratio_ci95 is None and x.delta_ci95 is None and "single reading" in x.method
    assert x.verdict == "unknown"


def test_independent_exact_against_sampled_side():
    b = stats.exact("memory.peak_rss_bytes", 100.0, "bytes", False, "counted")
    c = stats.log_measurement("memory.peak_rss_bytes", [40.0, 42.0, 41.0], "bytes", False, "p")
    x = _one(compare(_record("baseline", [b]), _record("compressed", [c])), "memory.peak_rss_bytes")
    assert x.df == 2 and x.ratio_ci95[0] < x.ratio < x.ratio_ci95[1] < 1


def test_independent_nll_uses_means_and_fieller():
    b = stats.mean_measurement("wikitext2.nll", NLL_BASE, "nats/token", False, "w")
    c = stats.mean_measurement("wikitext2.nll", NLL_COMP, "nats/token", False, "w")
    x = _one(compare(_record("baseline", [b]), _record("compressed", [c])), "wikitext2.nll")
    assert x.scale == "mean" and not x.paired
    assert x.baseline == pytest.approx(b["value"]) and x.ratio == pytest.approx(
        c["value"] / b["value"]
    )
    assert x.ratio_ci95[0] < 1 < x.ratio_ci95[1] and x.delta_ci95[0] < 0 < x.delta_ci95[1]


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


def test_version_1_comparison_still_loads():
    old = dict(
        metric="wikitext2.nll", unit="nats/token", higher_is_better=False, baseline=2.0,
        compressed=2.01, delta=0.01, delta_ci95=[-0.01, 0.02], ratio=1.005, ratio_ci95=None,
        paired=True, verdict="no significant change", method="paired over windows",
    )  # fmt: skip
    c = Comparison.model_validate(old)
    assert c.log_ratio_stderr is None and c.df is None and c.n is None and c.scale is None


# -- coverage by simulation ----------------------------------------------------------------
def _covers(comps: list[Comparison], truth: float) -> float:
    return sum(c.ratio_ci95 is not None and c.ratio_ci95[0] <= truth <= c.ratio_ci95[1]
               for c in comps) / len(comps)  # fmt: skip


def _paired_draws(name, unit, base, comp, scale):
    mb = Measurement(name=name, value=1.0, unit=unit, higher_is_better=False, n=1)
    rb = RunRecord(label="baseline", model={}, dtype="f", measurements=[mb])
    rc = RunRecord(label="compressed", model={}, dtype="f", measurements=[mb])
    return [
        _one(compare(rb, rc, {name: stats.Paired(b, c, scale)}), name)
        for b, c in zip(base, comp, strict=True)
    ]


def test_coverage_log_paired_ratio_on_lognormal_pairs():
    rng = np.random.default_rng(11)
    true_ratio = 1.8
    drift = rng.normal(0, 0.3, size=(DRAWS, 6))  # shared by both processes of a pair
    b = np.exp(math.log(25.0) + drift + rng.normal(0, 0.05, size=(DRAWS, 6)))
    c = np.exp(math.log(25.0 * true_ratio) + drift + rng.normal(0, 0.05, size=(DRAWS, 6)))
    comps = _paired_draws("decode.tokens_per_s", "tokens/s", b, c, "log")
    assert 0.93 <= _covers(comps, true_ratio) <= 0.97


def test_coverage_paired_perplexity_ratio():
    rng = np.random.default_rng(12)
    shift = 0.02  # true perplexity ratio exp(0.02)
    b = rng.normal(2.5, 0.3, size=(DRAWS, 8))
    c = b + shift + rng.normal(0, 0.01, size=(DRAWS, 8))
    comps = _paired_draws("wikitext2.perplexity", "perplexity", b, c, "perplexity")
    assert 0.93 <= _covers(comps, math.exp(shift)) <= 0.97


def test_coverage_paired_nll_ratio_mean_scale():
    rng = np.random.default_rng(13)
    b = rng.normal(2.5, 0.3, size=(DRAWS, 8))  # true ratio of means: 1.01 * 2.5 / 2.5
    c = 1.01 * b + rng.normal(0, 0.01, size=(DRAWS, 8))
    comps = _paired_draws("wikitext2.nll", "nats/token", b, c, "mean")
    assert 0.93 <= _covers(comps, 1.01) <= 0.97


def _independent_draws(name, unit, base, comp, make):
    out = []
    for b, c in zip(base, comp, strict=True):
        rb = _record("baseline", [make(name, b, unit, False, "sim")])
        rc = _record("compressed", [make(name, c, unit, False, "sim")])
        out.append(_one(compare(rb, rc), name))
    return out


def test_coverage_independent_log_ratio():
    rng = np.random.default_rng(14)
    b = np.exp(rng.normal(math.log(10.0), 0.1, size=(DRAWS, 5)))
    c = np.exp(rng.normal(math.log(5.0), 0.2, size=(DRAWS, 4)))  # unequal spread and n
    comps = _independent_draws("prefill.latency_ms", "ms", b, c, stats.log_measurement)
    assert 0.93 <= _covers(comps, 0.5) <= 0.97


def test_coverage_independent_mean_ratio():
    rng = np.random.default_rng(15)
    b = rng.normal(2.5, 0.3, size=(DRAWS, 8))
    c = rng.normal(2.6, 0.2, size=(DRAWS, 6))
    comps = _independent_draws("wikitext2.nll", "nats/token", b, c, stats.mean_measurement)
    assert 0.93 <= _covers(comps, 2.6 / 2.5) <= 0.97

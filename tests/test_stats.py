"""compress.stats: intervals on hand-computed numbers, and their coverage by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from compress import stats

DRAWS = 2000


def _coverage(cis: list[list[float] | None], truth: float) -> float:
    return sum(ci is not None and ci[0] <= truth <= ci[1] for ci in cis) / len(cis)


# -- quantiles and hand-computed intervals ------------------------------------------------
def test_t_quantile_is_scipy():
    assert stats.t_quantile(3) == pytest.approx(3.182446, abs=1e-6)
    assert stats.t_quantile(3, 0.975) == pytest.approx(st.t.ppf(0.9875, 3))
    assert stats.t_quantile(4.5) == pytest.approx(st.t.ppf(0.975, 4.5))  # Welch df: real
    assert stats.t_quantile_975(40) == pytest.approx(2.021075, abs=1e-6)  # no jump to z at 30
    with pytest.raises(ValueError):
        stats.t_quantile(0)
    with pytest.raises(ValueError):
        stats.t_quantile(3, 1.0)


def test_mean_ci_hand_computed():
    m, se, ci = stats.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5
    assert se == pytest.approx(math.sqrt(5 / 3) / 2)
    half = st.t.ppf(0.975, 3) * math.sqrt(5 / 3) / 2
    assert ci == pytest.approx((2.5 - half, 2.5 + half))
    assert stats.mean_ci([7.0]) == (7.0, None, None)


def test_paired_diff_hand_computed():
    a = [1.0, 2.0, 3.0]
    b = [2.0, 4.0, 6.0]  # differences b - a: 1, 2, 3 -> mean 2, sd 1, se 1/sqrt(3)
    d, se, ci = stats.paired_diff(a, b)
    assert d == 2.0 and se == pytest.approx(1 / math.sqrt(3))
    h = st.t.ppf(0.975, 2) / math.sqrt(3)
    assert ci == pytest.approx((2 - h, 2 + h))
    assert stats.paired_diff(b, a)[0] == -2.0
    with pytest.raises(ValueError):
        stats.paired_diff([1.0, 2.0], [1.0])


def test_welch_df_and_exact_side():
    se, df = stats.welch(4.0, 5, 1.0, 10)  # variances of single samples, sizes
    ta, tb = 4.0 / 5, 1.0 / 10
    assert se == pytest.approx(math.sqrt(ta + tb))
    assert df == pytest.approx((ta + tb) ** 2 / (ta**2 / 4 + tb**2 / 9))
    se, df = stats.welch(0.0, 1, 2.0, 6)  # an exact side adds nothing
    assert se == pytest.approx(math.sqrt(2 / 6)) and df == 5
    assert stats.welch(0.0, 1, 0.0, 1) == (0.0, None)


def test_fieller_hand_computed_and_unbounded():
    # mc/mb = 2; with tiny variances the interval hugs 2 and is asymmetric like the quotient
    lo, hi = stats.fieller(10.0, 20.0, 0.01, 0.04, 0.0, 2.0)
    assert lo < 2 < hi and hi - lo < 0.2
    # the interval solves (mc - r mb)^2 = t^2 (vc - 2 r cov + r^2 vb) at both ends
    for r in (lo, hi):
        assert (20 - 10 * r) ** 2 == pytest.approx(4 * (0.04 + r * r * 0.01))
    assert stats.fieller(0.1, 1.0, 1.0, 0.1, 0.0, 2.0) is None  # mb not away from 0


def test_quotient_range_signs():
    # the review's example: saving [-0.10, -0.05] over loss [0.8, 1.6]
    assert stats.quotient_range([-0.10, -0.05], [0.8, 1.6]) == pytest.approx([-0.125, -0.03125])
    assert stats.quotient_range([0.35, 0.45], [0.01, 0.03]) == pytest.approx([35 / 3, 45])
    assert stats.quotient_range([-0.1, 0.2], [0.5, 1.0]) == pytest.approx([-0.2, 0.4])  # 0 inside
    assert stats.quotient_range([0.0, 0.2], [0.5, 1.0]) == pytest.approx([0.0, 0.4])  # zero end
    assert stats.quotient_range([0.1, 0.2], [0.0, 1.0]) is None  # loss end at 0: unbounded
    assert stats.quotient_range([0.1, 0.2], [-0.1, 1.0]) is None


def test_order_statistic_interval():
    ci, cov = stats.median_ci_order_stat(list(range(1, 11)))
    assert ci == [2.0, 9.0]  # n = 10: k = 2
    assert cov == pytest.approx(1 - 2 * 11 / 1024)
    ci, cov = stats.median_ci_order_stat([5.0, 1.0, 4.0, 2.0, 3.0, 6.0])
    assert ci == [1.0, 6.0] and cov == pytest.approx(1 - 2 / 64)
    with pytest.raises(ValueError):
        stats.median_ci_order_stat([1, 2, 3, 4, 5])


def test_signed_rank_cdf_matches_enumeration():
    n = 6
    sums = [sum(r + 1 for r in range(n) if mask >> r & 1) for mask in range(2**n)]
    cdf = stats.signed_rank_cdf(n)
    for t in range(n * (n + 1) // 2 + 1):
        assert cdf[t] == pytest.approx(sum(s <= t for s in sums) / 2**n)


def test_hodges_lehmann_hand_computed():
    d = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    est, ci, cov = stats.hodges_lehmann(d)
    assert est == 3.5
    # n = 6: P(T+ <= 0) = 1/64 <= 2.5% < P(T+ <= 1) = 2/64: k = 1, the extreme Walsh averages
    assert ci == [1.0, 6.0] and cov == pytest.approx(1 - 2 / 64)
    assert stats.hodges_lehmann(d[:5]) is None


# -- measurement dicts ----------------------------------------------------------------------
def test_measurement_mean_below_6_and_median_from_6():
    few = stats.measurement("t", [1.0, 2.0, 6.0], "s", False, "timed")
    assert few["value"] == 3.0  # the mean, not the median 2.0: the t-interval is for the mean
    assert few["ci95"] == pytest.approx(stats.t_interval([1.0, 2.0, 6.0]))
    assert "mean of 3 repeats" in few["method"]
    six = stats.measurement("t", [5.0, 1.0, 4.0, 2.0, 3.0, 60.0], "s", False, "timed")
    assert six["value"] == 3.5 and six["ci95"] == [1.0, 60.0]
    assert "median" in six["method"] and "96.9%" in six["method"]
    assert six["stderr"] == pytest.approx(59 / (2 * st.norm.ppf(0.5 + (1 - 2 / 64) / 2)))
    assert tuple(six) == stats.KEYS


def test_identical_readings_have_no_interval():
    m = stats.measurement("t", [2.0, 2.0, 2.0], "s", False, "timed")
    assert m["value"] == 2.0 and m["ci95"] is None and m["stderr"] == 0.0
    assert "zero spread" in m["method"] and "no interval" in m["method"]
    g = stats.log_measurement("t", [3.0] * 6, "s", False, "timed")
    assert g["ci95"] is None and "zero spread" in g["method"]
    w = stats.mean_measurement("kld.mean", [0.0, 0.0], "nats/token", False, "w")
    assert w["ci95"] is None and "zero spread" in w["method"]


def test_log_measurement_hand_computed():
    xs = [10.0, 20.0, 40.0]
    m = stats.log_measurement("decode.tokens_per_s", xs, "tokens/s", True, "per process")
    assert tuple(m) == stats.KEYS
    assert m["value"] == pytest.approx(20.0)  # geometric mean
    logs = np.log(xs)
    se = logs.std(ddof=1) / math.sqrt(3)
    h = st.t.ppf(0.975, 2) * se
    assert m["ci95"] == pytest.approx([20 * math.exp(-h), 20 * math.exp(h)])
    assert m["stderr"] == pytest.approx(20 * se)
    assert "geometric mean" in m["method"] and "delta method" in m["method"]
    assert m["samples"] == xs
    one = stats.log_measurement("x", [5.0], "u", True, "m")
    assert one["value"] == pytest.approx(5.0) and one["ci95"] is None and one["stderr"] is None
    with pytest.raises(ValueError):
        stats.log_measurement("x", [1.0, 0.0], "u", True, "m")


def test_log_measurement_reciprocal_samples_give_reciprocal_values():
    tps = [31.0, 29.5, 30.2, 28.8]
    lat = [1000.0 / t for t in tps]
    a = stats.log_measurement("decode.tokens_per_s", tps, "tokens/s", True, "m")
    b = stats.log_measurement("decode.latency_ms_per_token", lat, "ms", False, "m")
    assert a["value"] * b["value"] == pytest.approx(1000.0)
    assert a["ci95"][0] * b["ci95"][1] == pytest.approx(1000.0)
    assert a["ci95"][1] * b["ci95"][0] == pytest.approx(1000.0)


def test_mean_measurement_keys_and_values():
    m = stats.mean_measurement("wikitext2.nll", [1.0, 2.0, 3.0], "nats/token", False, "per window")
    assert tuple(m) == stats.KEYS
    assert m["value"] == 2.0 and m["n"] == 3
    assert m["ci95"] == pytest.approx(stats.t_interval([1.0, 2.0, 3.0]))
    assert m["method"].startswith("per window")
    single = stats.mean_measurement("x", [4.0], "u", True, "m")
    assert single["ci95"] is None and single["stderr"] is None


def test_exact_and_unavailable():
    e = stats.exact("b", 10, "bytes", False, "counted")
    assert e["stderr"] == 0.0 and e["n"] == 1 and stats.is_exact(e["n"], e["stderr"])
    assert not stats.is_exact(1, None) and not stats.is_exact(3, 0.0)
    u = stats.unavailable("x", "u", True, "no gpu")
    assert u["value"] is None and u["status"] == "unavailable" and tuple(u) == stats.KEYS


# -- coverage by simulation ----------------------------------------------------------------
def test_coverage_t_interval_for_a_mean_of_normal_data():
    rng = np.random.default_rng(1)
    x = rng.normal(10.0, 2.0, size=(DRAWS, 5))
    cis = [stats.measurement("t", row, "ms", False, "sim")["ci95"] for row in x]
    assert 0.93 <= _coverage(cis, 10.0) <= 0.97
    cis = [stats.mean_measurement("w", row, "u", False, "sim")["ci95"] for row in x]
    assert 0.93 <= _coverage(cis, 10.0) <= 0.97


def test_coverage_log_measurement_of_lognormal_samples():
    rng = np.random.default_rng(2)
    x = np.exp(rng.normal(math.log(30.0), 0.2, size=(DRAWS, 5)))  # true geometric mean 30
    cis = [stats.log_measurement("t", row, "tokens/s", True, "sim")["ci95"] for row in x]
    assert 0.93 <= _coverage(cis, 30.0) <= 0.97


def test_coverage_order_statistic_median_interval_is_at_least_nominal():
    rng = np.random.default_rng(3)
    x = rng.exponential(1.0, size=(DRAWS, 6))  # skewed; true median ln 2; exact cover 96.9%
    cis = [stats.measurement("t", row, "ms", False, "sim")["ci95"] for row in x]
    assert 0.95 <= _coverage(cis, math.log(2)) <= 0.99


def test_coverage_hodges_lehmann_interval():
    rng = np.random.default_rng(4)
    d = rng.standard_t(5, size=(DRAWS, 8)) * 0.1 + 0.3  # symmetric around 0.3; exact 96.1%
    cis = [stats.hodges_lehmann(row)[1] for row in d]
    assert 0.95 <= _coverage(cis, 0.3) <= 0.99

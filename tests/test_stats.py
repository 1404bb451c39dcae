"""compress.stats: intervals on hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from compress import stats


def test_mean_ci_hand_computed():
    m, se, ci = stats.mean_ci([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, sample sd sqrt(5/3), se = sd / 2, t(3) = 3.1824
    assert m == 2.5
    assert se == pytest.approx(math.sqrt(5 / 3) / 2)
    half = 3.1824 * math.sqrt(5 / 3) / 2
    assert ci == pytest.approx((2.5 - half, 2.5 + half))


def test_mean_ci_single_sample_has_no_interval():
    assert stats.mean_ci([7.0]) == (7.0, None, None)


def test_mean_ci_uses_normal_quantile_beyond_30():
    xs = [float(i % 2) for i in range(40)]  # mean 0.5, sd = sqrt(10/39)
    m, se, ci = stats.mean_ci(xs)
    assert se == pytest.approx(math.sqrt(10 / 39) / math.sqrt(40))
    assert ci[1] - m == pytest.approx(1.959964 * se)


def test_paired_diff_hand_computed():
    a = [1.0, 2.0, 3.0]
    b = [2.0, 4.0, 6.0]  # differences b - a: 1, 2, 3 -> mean 2, sd 1, se 1/sqrt(3)
    d, se, ci = stats.paired_diff(a, b)
    assert d == 2.0
    assert se == pytest.approx(1 / math.sqrt(3))
    assert ci == pytest.approx((2 - 4.3027 / math.sqrt(3), 2 + 4.3027 / math.sqrt(3)))
    # sign: b - a, so swapping flips it
    assert stats.paired_diff(b, a)[0] == -2.0


def test_paired_diff_constant_shift_has_zero_width():
    d, se, ci = stats.paired_diff([1.0, 5.0, 2.0], [1.5, 5.5, 2.5])
    assert d == pytest.approx(0.5) and se == pytest.approx(0.0, abs=1e-12)
    assert ci == pytest.approx((0.5, 0.5))


def test_paired_diff_length_mismatch():
    with pytest.raises(ValueError):
        stats.paired_diff([1.0, 2.0], [1.0])


def test_log_ratio_ci_hand_computed():
    a, b = [1.0, 3.0], [4.0, 8.0]
    # means 2 and 6, se 1 and 2 -> se_log = sqrt(0.5^2 + (1/3)^2), df 1 -> t = 12.7062
    r, ci = stats.log_ratio_ci(a, b)
    assert r == 3.0
    h = 12.7062 * math.sqrt(0.25 + 1 / 9)
    assert ci == pytest.approx((3 * math.exp(-h), 3 * math.exp(h)))
    assert ci[0] < r < ci[1]
    assert ci[0] * ci[1] == pytest.approx(r * r)  # symmetric on the log scale


def test_log_ratio_ci_uses_smaller_n():
    a = [10.0, 11.0, 9.0, 10.0, 10.0]
    b = [5.0, 5.5]
    r, ci = stats.log_ratio_ci(a, b)
    _, sa, _ = stats.mean_ci(a)
    _, sb, _ = stats.mean_ci(b)
    h = 12.7062 * math.sqrt((sa / 10) ** 2 + (sb / 5.25) ** 2)  # df = min(5, 2) - 1 = 1
    assert r == pytest.approx(0.525)
    assert ci == pytest.approx((r * math.exp(-h), r * math.exp(h)))


def test_log_ratio_ci_without_interval():
    assert stats.log_ratio_ci([2.0], [4.0, 6.0]) == (2.5, None)
    r, ci = stats.log_ratio_ci([-1.0, 1.0, 3.0], [2.0, 2.0, 2.0])  # mean a = 1 > 0, b fine
    assert r == 2.0 and ci is not None
    assert stats.log_ratio_ci([-3.0, 1.0], [2.0, 4.0])[1] is None  # mean a <= 0


def test_mean_measurement_keys_and_values():
    m = stats.mean_measurement("wikitext2.nll", [1.0, 2.0, 3.0], "nats/token", False, "per window")
    assert tuple(m) == stats.KEYS
    assert m["value"] == 2.0 and m["n"] == 3
    assert m["stderr"] == pytest.approx(1 / math.sqrt(3))
    assert isinstance(m["ci95"], list)
    assert m["ci95"] == pytest.approx([2 - 4.3027 / math.sqrt(3), 2 + 4.3027 / math.sqrt(3)])
    assert m["samples"] == [1.0, 2.0, 3.0]
    assert m["status"] == "measured" and m["reason"] is None and m["higher_is_better"] is False
    assert m["method"].startswith("per window")
    single = stats.mean_measurement("x", [4.0], "u", True, "m")
    assert single["ci95"] is None and single["stderr"] is None


def test_measurement_median_and_order_stat_interval():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0, 6.0]  # n = 6: k = 1, interval [min, max], coverage 96.875%
    m = stats.measurement("t", xs, "s", False, "timed")
    assert m["value"] == 3.5 and m["ci95"] == [1.0, 6.0]
    assert "96.9%" in m["method"]
    few = stats.measurement("t", [1.0, 3.0], "s", False, "timed")
    assert few["ci95"] == pytest.approx([2 - 12.7062, 2 + 12.7062])
    assert stats.exact("b", 10, "bytes", False, "counted")["stderr"] == 0.0
    u = stats.unavailable("x", "u", True, "no gpu")
    assert u["value"] is None and u["status"] == "unavailable" and tuple(u) == stats.KEYS

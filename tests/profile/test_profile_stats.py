import math

import pytest

from compress.stats import (
    KEYS,
    exact,
    measurement,
    median,
    median_ci_order_stat,
    t_quantile,
    t_quantile_975,
    unavailable,
)


def test_keys_and_median():
    m = measurement("decode.tokens_per_s", [3.0, 1.0, 2.0], "tokens/s", True, "a test")
    assert tuple(m) == KEYS
    assert m["value"] == 2.0
    assert m["n"] == 3
    assert m["samples"] == [3.0, 1.0, 2.0]  # raw order kept
    assert m["status"] == "measured" and m["reason"] is None
    assert median([4, 1, 3, 2]) == 2.5


def test_t_interval_known_example():
    # mean 2.5, sd 1.2910, se 0.6455, t(0.975, 3) = 3.1824 -> 2.5 +- 2.0543
    m = measurement("x", [1, 2, 4, 3], "ms", False, "a test")
    assert m["value"] == 2.5  # n < 6: the mean, the statistic the t-interval is for
    assert m["stderr"] == pytest.approx(0.645497, abs=1e-6)
    lo, hi = m["ci95"]
    assert lo == pytest.approx(0.44574, abs=1e-4)
    assert hi == pytest.approx(4.55426, abs=1e-4)
    assert "mean of 4 repeats with a Student-t 95% interval" in m["method"]


def test_single_sample_has_no_interval():
    m = measurement("x", [5.0], "ms", False, "a test")
    assert m["value"] == 5.0 and m["n"] == 1
    assert m["ci95"] is None and m["stderr"] is None


def test_order_statistic_interval_for_n_ge_6():
    xs = [10, 1, 9, 2, 8, 3]
    m = measurement("x", xs, "ms", False, "a test")
    assert m["ci95"] == [1.0, 10.0]  # n = 6: k = 1, coverage 1 - 2/64
    assert "order-statistic interval for the median" in m["method"]
    ci, cov = median_ci_order_stat(list(range(1, 11)))
    assert ci == [2.0, 9.0]  # n = 10: k = 2
    assert cov == pytest.approx(1 - 2 * 11 / 1024)
    with pytest.raises(ValueError):
        median_ci_order_stat([1, 2, 3, 4, 5])


def test_t_quantiles_from_scipy():
    assert t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile_975(30) == pytest.approx(2.042, abs=1e-3)
    assert t_quantile_975(31) == pytest.approx(2.040, abs=1e-3)  # exact t, no switch to z
    assert t_quantile(10**6) == pytest.approx(1.96, abs=1e-3)


def test_unavailable_and_exact():
    u = unavailable("energy.joules_per_token", "J/token", False, "no meter")
    assert tuple(u) == KEYS
    assert u["value"] is None and u["status"] == "unavailable" and u["reason"] == "no meter"
    with pytest.raises(ValueError):
        unavailable("x", "J", False, "")
    e = exact("weights.bytes", 123, "bytes", False, "counted")
    assert e["n"] == 1 and e["stderr"] == 0.0 and e["value"] == 123.0


def test_rejects_empty_and_nan():
    with pytest.raises(ValueError):
        measurement("x", [], "ms", False, "a test")
    with pytest.raises(ValueError):
        measurement("x", [1.0, math.nan], "ms", False, "a test")

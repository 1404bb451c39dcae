"""Statistics shared by eval, profile, comparisons and gates, and the measurement dicts
they produce (see `KEYS`; the report layer validates them into `Measurement`).

Repeated timings: the value is the median of the per-repeat samples; the 95% interval is a
distribution-free order-statistic interval for the median when n >= 6 (with n = 5 even
[min, max] covers the median only 93.75% of the time), a Student-t interval for the mean when
2 <= n < 6, absent for n = 1. Quality over windows: mean with a t-interval. Differences between
two models on the same windows are paired; speed ratios of independent runs use the delta
method on the log ratio. Which one was used is written into each measurement's `method`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

KEYS = (
    "name",
    "value",
    "unit",
    "higher_is_better",
    "n",
    "stderr",
    "ci95",
    "samples",
    "status",
    "method",
    "reason",
)

#: Two-sided 95% Student-t quantiles (t_{0.975, df}) for df = 1..30.
T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
Z975 = 1.959964  # normal quantile, used for df > 30

#: Smallest n for which the order-statistic interval for the median reaches 95% coverage.
MIN_N_ORDER_STAT = 6


def t_quantile_975(df: int) -> float:
    """t_{0.975, df} from the table for df 1..30, the normal quantile beyond."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T975[df - 1] if df <= len(T975) else Z975


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        raise ValueError("median of no samples")
    mid = n // 2
    return float(s[mid]) if n % 2 else (s[mid - 1] + s[mid]) / 2.0


def stderr_of_mean(xs: Sequence[float]) -> float | None:
    """Sample standard deviation / sqrt(n); None for fewer than 2 samples."""
    n = len(xs)
    if n < 2:
        return None
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return math.sqrt(var) / math.sqrt(n)


def median_ci_order_stat(xs: Sequence[float]) -> tuple[list[float], float]:
    """Distribution-free 95% interval for the median: [x_(k), x_(n+1-k)] with the largest k
    such that P(Binomial(n, 1/2) <= k-1) <= 2.5%. Returns the interval and its exact coverage."""
    s = sorted(xs)
    n = len(s)
    if n < MIN_N_ORDER_STAT:
        raise ValueError(f"need n >= {MIN_N_ORDER_STAT} for a 95% order-statistic interval")
    k, tail = 0, 0.0  # tail = P(B <= k-1)
    while True:
        nxt = tail + math.comb(n, k) / 2.0**n  # P(B <= k)
        if nxt > 0.025:
            break
        k, tail = k + 1, nxt
    return [float(s[k - 1]), float(s[n - k])], 1.0 - 2.0 * tail


def t_interval(xs: Sequence[float]) -> list[float]:
    """95% Student-t interval for the mean (needs n >= 2)."""
    n = len(xs)
    se = stderr_of_mean(xs)
    if se is None:
        raise ValueError("need n >= 2 for a t interval")
    mean = sum(xs) / n
    half = t_quantile_975(n - 1) * se
    return [mean - half, mean + half]


def measurement(
    name: str,
    samples: Sequence[float],
    unit: str,
    higher_is_better: bool,
    method: str,
    status: str = "measured",
    *,
    reason: str | None = None,
) -> dict[str, Any]:
    """A measurement from raw per-repeat samples: median, stderr of the mean, 95% interval."""
    xs = [float(x) for x in samples]
    if not xs:
        raise ValueError(f"{name}: no samples; use unavailable() instead")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"{name}: non-finite sample in {xs}")
    n = len(xs)
    if n >= MIN_N_ORDER_STAT:
        ci, cov = median_ci_order_stat(xs)
        how = (
            f"value is the median of {n} repeats; 95% CI is the distribution-free "
            f"order-statistic interval for the median (exact coverage {cov:.1%})"
        )
    elif n >= 2:
        ci = t_interval(xs)
        how = (
            f"value is the median of {n} repeats; 95% CI is a Student-t interval for the mean "
            f"(n < {MIN_N_ORDER_STAT}, too few for an order-statistic interval)"
        )
    else:
        ci = None
        how = "single reading, no interval"
    return {
        "name": name,
        "value": median(xs),
        "unit": unit,
        "higher_is_better": bool(higher_is_better),
        "n": n,
        "stderr": stderr_of_mean(xs),
        "ci95": ci,
        "samples": xs,
        "status": status,
        "method": f"{method.rstrip('. ')}; {how}.",
        "reason": reason,
    }


def exact(
    name: str, value: float, unit: str, higher_is_better: bool, method: str
) -> dict[str, Any]:
    """A value that is counted, not sampled (e.g. bytes of weights): n=1, stderr 0."""
    return {
        "name": name,
        "value": float(value),
        "unit": unit,
        "higher_is_better": bool(higher_is_better),
        "n": 1,
        "stderr": 0.0,
        "ci95": None,
        "samples": [float(value)],
        "status": "measured",
        "method": method,
        "reason": None,
    }


def unavailable(
    name: str, unit: str, higher_is_better: bool, reason: str, method: str = "not measured"
) -> dict[str, Any]:
    """A measurement that could not be taken. `value` is None, never 0."""
    if not reason:
        raise ValueError(f"{name}: an unavailable measurement needs a reason")
    return {
        "name": name,
        "value": None,
        "unit": unit,
        "higher_is_better": bool(higher_is_better),
        "n": 0,
        "stderr": None,
        "ci95": None,
        "samples": [],
        "status": "unavailable",
        "method": method,
        "reason": reason,
    }


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def mean_ci(xs: Sequence[float]) -> tuple[float, float | None, tuple[float, float] | None]:
    """(mean, stderr, 95% t-interval) of independent samples; no interval for n < 2."""
    m = mean(xs)
    se = stderr_of_mean(xs)
    if se is None:
        return m, None, None
    h = t_quantile_975(len(xs) - 1) * se
    return m, se, (m - h, m + h)


def paired_diff(a: Sequence[float], b: Sequence[float]):
    """Mean of b - a over paired samples with its stderr and 95% interval."""
    if len(a) != len(b):
        raise ValueError("paired samples need equal lengths")
    return mean_ci([y - x for x, y in zip(a, b, strict=False)])


def log_ratio_ci(
    a: Sequence[float], b: Sequence[float]
) -> tuple[float, tuple[float, float] | None]:
    """Ratio of means b/a of two independent sample sets, 95% interval via the log delta method
    (df = the smaller n - 1, conservative)."""
    ma, sa, _ = mean_ci(a)
    mb, sb, _ = mean_ci(b)
    r = mb / ma
    if sa is None or sb is None or ma <= 0 or mb <= 0:
        return r, None
    se_log = math.sqrt((sa / ma) ** 2 + (sb / mb) ** 2)
    h = t_quantile_975(min(len(a), len(b)) - 1) * se_log
    return r, (r * math.exp(-h), r * math.exp(h))


def mean_measurement(
    name: str, xs: Sequence[float], unit: str, higher_is_better: bool, method: str
) -> dict[str, Any]:
    """A measurement whose value is the mean of per-window samples, with a t-interval."""
    m, se, ci = mean_ci(xs)
    return {
        "name": name,
        "value": m,
        "unit": unit,
        "higher_is_better": bool(higher_is_better),
        "n": len(xs),
        "stderr": se,
        "ci95": list(ci) if ci else None,
        "samples": list(xs),
        "status": "measured",
        "method": f"{method}; mean with a t-interval across samples",
        "reason": None,
    }

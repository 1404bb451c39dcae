"""Statistics shared by eval, profile, comparisons and gates, and the measurement dicts
they produce (see `KEYS`; the report layer validates them into `Measurement`).

A value and its interval are always the same statistic:

- `measurement`: repeated readings. n >= 6: the median with the distribution-free
  order-statistic interval for the median; 2 <= n < 6: the mean with a Student-t interval.
- `log_measurement`: positive per-process samples (speed, memory): the geometric mean with
  exp(t-interval of the mean log).
- `mean_measurement`: per-window quality values: the mean with a t-interval.

Readings that are all identical get no interval (zero spread cannot estimate its own
uncertainty; the readings may be quantised), and `method` says so. Quantiles come from
scipy.stats; which statistic was used is written into each measurement's `method`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

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

#: Smallest n for which the order-statistic interval for the median reaches 95% coverage.
MIN_N_ORDER_STAT = 6
#: Largest n for which the Hodges-Lehmann estimate (n(n+1)/2 Walsh averages) is computed.
MAX_N_HODGES_LEHMANN = 2000

Scale = Literal["log", "perplexity", "mean"]
SCALES: tuple[str, ...] = ("log", "perplexity", "mean")


class Paired(NamedTuple):
    """Samples of one metric paired by index: `base[i]` and `comp[i]` come from the same
    evaluation window, or from pair i of alternating (baseline, compressed) processes.

    scale: "log" positive per-process samples (ratio = exp(mean per-pair log ratio));
    "perplexity" per-window NLLs (ratio of perplexities = exp(mean NLL difference));
    "mean" per-window values (ratio of the paired means, Fieller interval).
    """

    base: Sequence[float]
    comp: Sequence[float]
    scale: Scale


def _st() -> Any:
    from scipy import stats as st  # imported on first use: `compress validate` stays light

    return st


# -- quantiles ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def t_quantile(df: float, level: float = 0.95) -> float:
    """Two-sided Student-t quantile t_{(1+level)/2, df} (scipy.stats.t.ppf)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(_st().t.ppf(0.5 + level / 2, df))


def t_quantile_975(df: float) -> float:
    """t_{0.975, df}: the quantile of a two-sided 95% interval."""
    return t_quantile(df, 0.95)


def z_quantile(level: float = 0.95) -> float:
    """Two-sided normal quantile z_{(1+level)/2}."""
    return float(_st().norm.ppf(0.5 + level / 2))


# -- point statistics -----------------------------------------------------------------------
def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        raise ValueError("median of no samples")
    mid = n // 2
    return float(s[mid]) if n % 2 else (s[mid - 1] + s[mid]) / 2.0


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def geometric_mean(xs: Sequence[float]) -> float:
    return math.exp(mean([math.log(x) for x in xs]))


def stderr_of_mean(xs: Sequence[float]) -> float | None:
    """Sample standard deviation / sqrt(n); None for fewer than 2 samples."""
    n = len(xs)
    if n < 2:
        return None
    m = sum(xs) / n
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    return math.sqrt(var) / math.sqrt(n)


# -- intervals ------------------------------------------------------------------------------
def median_ci_order_stat(xs: Sequence[float], level: float = 0.95) -> tuple[list[float], float]:
    """Distribution-free interval for the median: [x_(k), x_(n+1-k)] with the largest k such
    that P(Binomial(n, 1/2) <= k-1) <= (1-level)/2. Returns the interval and its exact
    coverage 1 - 2 P(B <= k-1) (>= level)."""
    s = sorted(xs)
    n = len(s)
    tails = _st().binom.cdf(np.arange(n // 2 + 1), n, 0.5)  # tails[j] = P(B <= j)
    ok = np.nonzero(tails <= (1 - level) / 2)[0]
    if ok.size == 0:
        raise ValueError(f"n = {n} is too few for a {level:.0%} order-statistic interval")
    k = int(ok[-1]) + 1
    return [float(s[k - 1]), float(s[n - k])], float(1.0 - 2.0 * tails[k - 1])


def t_interval(xs: Sequence[float], level: float = 0.95) -> list[float]:
    """Student-t interval for the mean (needs n >= 2)."""
    se = stderr_of_mean(xs)
    if se is None:
        raise ValueError("need n >= 2 for a t interval")
    m = mean(xs)
    half = t_quantile(len(xs) - 1, level) * se
    return [m - half, m + half]


def mean_ci(
    xs: Sequence[float], level: float = 0.95
) -> tuple[float, float | None, tuple[float, float] | None]:
    """(mean, stderr, t-interval) of independent samples; no interval for n < 2. A zero
    stderr gives a zero-width tuple here: callers that present it must say so."""
    m = mean(xs)
    se = stderr_of_mean(xs)
    if se is None:
        return m, None, None
    h = t_quantile(len(xs) - 1, level) * se
    return m, se, (m - h, m + h)


def paired_diff(
    a: Sequence[float], b: Sequence[float], level: float = 0.95
) -> tuple[float, float | None, tuple[float, float] | None]:
    """Mean of b - a over paired samples with its stderr and t-interval."""
    if len(a) != len(b):
        raise ValueError("paired samples need equal lengths")
    return mean_ci([y - x for x, y in zip(a, b, strict=True)], level)


def welch(va: float, na: int, vb: float, nb: int) -> tuple[float, float | None]:
    """Standard error of a difference of two independent means and its Welch-Satterthwaite
    df, from the sample variances and sizes. A side with n = 1 must be exact (variance 0)
    and adds nothing. df is None when both sides are exact."""
    ta, tb = va / na, vb / nb
    se = math.sqrt(ta + tb)
    den = (ta * ta / (na - 1) if na > 1 else 0.0) + (tb * tb / (nb - 1) if nb > 1 else 0.0)
    if den == 0:
        ns = [n for n in (na, nb) if n > 1]
        return se, float(min(ns) - 1) if ns else None
    return se, (ta + tb) ** 2 / den


def fieller(
    mb: float, mc: float, vb: float, vc: float, cov: float, tq: float
) -> list[float] | None:
    """Fieller interval for mc / mb, from the two estimates' variances and covariance (of the
    estimates, not of single samples) and the quantile tq. None when the denominator is not
    significantly away from 0 (the confidence set is then unbounded)."""
    t2 = tq * tq
    a = mb * mb - t2 * vb
    b = -2.0 * (mb * mc - t2 * cov)
    c = mc * mc - t2 * vc
    disc = b * b - 4 * a * c
    if a <= 0 or disc < 0:
        return None
    root = math.sqrt(disc)
    return sorted([(-b - root) / (2 * a), (-b + root) / (2 * a)])


@functools.lru_cache(maxsize=256)
def signed_rank_cdf(n: int) -> np.ndarray:
    """Exact null CDF of the Wilcoxon signed-rank statistic T+ for n pairs without ties:
    cdf[t] = P(T+ <= t), t = 0 .. n(n+1)/2 (subset-sum counts of the ranks 1..n)."""
    m = n * (n + 1) // 2
    counts = np.zeros(m + 1)
    counts[0] = 1.0
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[:-r].copy()
    return np.cumsum(counts) / 2.0**n


def hodges_lehmann(
    d: Sequence[float], level: float = 0.95
) -> tuple[float, list[float], float] | None:
    """Hodges-Lehmann estimate of the centre of paired differences (median of the Walsh
    averages) with the distribution-free interval that inverts the Wilcoxon signed-rank test.
    Returns (estimate, interval, coverage: exact for n <= 60, the normal approximation's
    nominal level beyond); None when n is too small or too large."""
    x = np.asarray(d, dtype=float)
    n = x.size
    if n < MIN_N_ORDER_STAT or n > MAX_N_HODGES_LEHMANN:
        return None
    i, j = np.triu_indices(n)
    walsh = np.sort((x[i] + x[j]) / 2.0)
    m = walsh.size
    alpha2 = (1 - level) / 2
    if n <= 60:
        cdf = signed_rank_cdf(n)
        ok = np.nonzero(cdf <= alpha2)[0]
        if ok.size == 0:
            return None
        k = int(ok[-1]) + 1  # P(T+ <= k-1) <= alpha/2
        cover = 1.0 - 2.0 * float(cdf[k - 1])
    else:  # normal approximation to T+
        mu, sd = m / 2.0, math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0)
        k = max(1, int(math.floor(mu - z_quantile(level) * sd)))
        cover = level
    return float(np.median(walsh)), [float(walsh[k - 1]), float(walsh[m - k])], cover


def quotient_range(num: Sequence[float], den: Sequence[float]) -> list[float] | None:
    """Range of x / y over x in [num], y in [den]: the smallest and largest of the four
    corners (x / y is monotone in each argument once y keeps one sign). None when the
    denominator interval touches 0 (the quotient is then unbounded)."""
    if den[0] <= 0 <= den[1]:
        return None
    corners = [x / y for x in num for y in den]
    return [min(corners), max(corners)]


# -- measurement dicts ----------------------------------------------------------------------
def _checked(name: str, samples: Sequence[float]) -> list[float]:
    xs = [float(x) for x in samples]
    if not xs:
        raise ValueError(f"{name}: no samples; use unavailable() instead")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"{name}: non-finite sample in {xs}")
    return xs


def _record(name, value, unit, hib, n, stderr, ci, xs, status, method, reason) -> dict:
    return dict(
        zip(
            KEYS,
            (name, value, unit, bool(hib), n, stderr, ci, xs, status, method, reason),
            strict=True,
        )
    )


def _zero_spread(n: int) -> str:
    return (
        f"all {n} readings identical (zero spread): no interval, since identical readings "
        "cannot estimate their own uncertainty (they may be quantised)"
    )


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
    """Repeated readings: the median with its order-statistic interval (n >= 6), else the
    mean with a Student-t interval; value and interval are always the same statistic."""
    xs = _checked(name, samples)
    n = len(xs)
    ci: list[float] | None = None
    if n == 1:
        value, se, how = xs[0], None, "single reading, no interval"
    elif max(xs) == min(xs):
        value, se, how = xs[0], 0.0, _zero_spread(n)
    elif n >= MIN_N_ORDER_STAT:
        value = median(xs)
        ci, cov = median_ci_order_stat(xs)
        se = (ci[1] - ci[0]) / (2 * z_quantile(cov))
        how = (
            f"value is the median of {n} repeats; 95% CI is the distribution-free "
            f"order-statistic interval for the median (exact coverage {cov:.1%}); stderr is "
            "its half-width over the normal quantile of that coverage"
        )
    else:
        value, se, ci = mean(xs), stderr_of_mean(xs), t_interval(xs)
        how = (
            f"value is the mean of {n} repeats with a Student-t 95% interval (n < "
            f"{MIN_N_ORDER_STAT}: too few for an order-statistic interval for the median)"
        )
    return _record(
        name, value, unit, higher_is_better, n, se, ci, xs, status,
        f"{method.rstrip('. ')}; {how}.", reason,
    )  # fmt: skip


def log_measurement(
    name: str,
    samples: Sequence[float],
    unit: str,
    higher_is_better: bool,
    method: str,
    status: str = "measured",
    *,
    reason: str | None = None,
) -> dict[str, Any]:
    """Positive per-process samples (one per fresh process: tokens/s, latency, peak bytes):
    value = geometric mean, 95% CI = exp(t-interval of the mean log) (n >= 2), stderr =
    value x stderr of the mean log (delta method). Reciprocal samples give reciprocal values
    and intervals, so a throughput and its latency stay consistent."""
    xs = _checked(name, samples)
    if min(xs) <= 0:
        raise ValueError(f"{name}: log_measurement needs positive samples, got {xs}")
    logs = [math.log(x) for x in xs]
    n, ml = len(xs), mean(logs)
    gm = math.exp(ml)
    ci: list[float] | None = None
    if n == 1:
        se, how = None, "one process, one sample: no interval"
    elif max(xs) == min(xs):
        se, how = 0.0, _zero_spread(n)
    else:
        se_log = stderr_of_mean(logs)
        assert se_log is not None
        h = t_quantile(n - 1) * se_log
        ci, se = [math.exp(ml - h), math.exp(ml + h)], gm * se_log
        how = (
            f"value is the geometric mean of {n} per-process samples; 95% CI = exp(Student-t "
            f"interval of the mean log, df {n - 1}); stderr = value x stderr of the mean log "
            "(delta method)"
        )
    return _record(
        name, gm, unit, higher_is_better, n, se, ci, xs, status,
        f"{method.rstrip('. ')}; {how}.", reason,
    )  # fmt: skip


def mean_measurement(
    name: str, xs: Sequence[float], unit: str, higher_is_better: bool, method: str
) -> dict[str, Any]:
    """A measurement whose value is the mean of per-window samples, with a t-interval."""
    xs = _checked(name, xs)
    m, se, ci = mean_ci(xs)
    how = "mean with a t-interval across samples"
    if se == 0:
        ci, how = None, f"mean; {_zero_spread(len(xs))}"
    return _record(
        name, m, unit, higher_is_better, len(xs), se, list(ci) if ci else None, xs,
        "measured", f"{method}; {how}", None,
    )  # fmt: skip


def exact(
    name: str, value: float, unit: str, higher_is_better: bool, method: str
) -> dict[str, Any]:
    """A value that is counted, not sampled (e.g. bytes of weights): n=1, stderr 0."""
    v = float(value)
    return _record(name, v, unit, higher_is_better, 1, 0.0, None, [v], "measured", method, None)


def is_exact(n: int, stderr: float | None) -> bool:
    """The signature `exact()` leaves: one counted value with stderr 0."""
    return n == 1 and stderr == 0


def unavailable(
    name: str, unit: str, higher_is_better: bool, reason: str, method: str = "not measured"
) -> dict[str, Any]:
    """A measurement that could not be taken. `value` is None, never 0."""
    if not reason:
        raise ValueError(f"{name}: an unavailable measurement needs a reason")
    return _record(
        name, None, unit, higher_is_better, 0, None, None, [], "unavailable", method, reason
    )

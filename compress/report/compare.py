"""Baseline vs compressed: deltas and ratios with 95% intervals on the DIFFERENCE.

Paired metrics (`stats.Paired`, or a legacy `(base, comp)` tuple) are compared pair by pair:

- "log": positive per-process samples, pair i = (baseline process i, compressed process i).
  ratio = exp(mean per-pair log ratio) with a Student-t interval (df n-1); the baseline and
  compressed columns are geometric means, so compressed / baseline == ratio and a throughput
  ratio is the reciprocal of the matching latency ratio. With n >= 6 the Hodges-Lehmann
  estimate and its Wilcoxon interval are written into `method` as a distribution-free check.
- "perplexity": per-window NLLs; ratio = exp(mean per-window NLL difference).
- "mean": per-window values (e.g. NLL); ratio of the paired means with a Fieller interval
  (it contains 1 exactly when the paired-t delta interval contains 0).

Unpaired metrics: exact counts on both sides stay exact; positive samples are compared on the
log scale (geometric means, Welch-t on the logs); other samples (NLL, fractions) by their means
(Welch delta, Fieller ratio). A side with a single non-exact reading, or readings with zero
spread, gives no interval, so a gate on it is inconclusive rather than certain.

`log_ratio_stderr`, `delta_stderr`, `df` and `n` on each Comparison let a consumer recompute
an interval at another level: ratio * exp(+-t(df) * log_ratio_stderr) ("log", "perplexity"),
delta +- t(df) * delta_stderr.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from compress import stats
from compress.metrics import is_relative
from compress.report.schema import Comparison, Measurement, RunRecord

#: metrics computed as constant / another metric, sample by sample: paired like the metric
#: they come from
DERIVED_FROM = {"cost.usd_per_million_tokens": "decode.tokens_per_s"}
#: unpaired metrics compared by their means (everything else with positive samples: log scale)
MEAN_UNITS = ("nats/token", "fraction")
#: a standard error this small relative to its values is rounding, not spread
_ROUNDING = 1e-12

PairedArg = dict[str, "stats.Paired | tuple[Sequence[float], Sequence[float]]"]


@dataclass
class _Est:
    baseline: float | None
    compressed: float | None
    delta: float | None
    ratio: float | None
    method: str
    paired: bool
    delta_ci95: list[float] | None = None
    ratio_ci95: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # stderrs, df, n, scale


def _verdict(delta, dci, rci, higher_is_better) -> str:
    if delta is None:
        return "unknown"
    if dci is not None:
        lo, hi = dci
    elif rci is not None:
        lo, hi = rci[0] - 1, rci[1] - 1
    else:
        return "no significant change" if delta == 0 else "unknown"
    if lo <= 0 <= hi:
        return "no significant change"
    return "better" if (lo > 0) == higher_is_better else "worse"


def _no_interval(se: float | None, n: int, unit: str, ref: float = 1.0) -> str | None:
    """Why there is no interval: too few samples, or zero spread (up to rounding: `ref` is
    the magnitude of the compared values)."""
    if se is None:
        return f"{n} {unit}: no interval"
    if se <= _ROUNDING * max(ref, 1e-300):
        return f"zero spread across {n} {unit}: no interval (it cannot estimate its own error)"
    return None


def _log_est(lb, lc, se, df, n, how: str, paired: bool, scale: str, unit: str) -> _Est:
    """Columns = exp(mean log); ratio = exp(mean log c - mean log b) with a t-interval."""
    mb, mc = stats.mean(lb), stats.mean(lc)
    gb, gc = math.exp(mb), math.exp(mc)
    ratio = math.exp(mc - mb)
    est = _Est(gb, gc, gc - gb, ratio, how, paired)
    est.extra = dict(scale=scale, n=n, df=df, log_ratio_stderr=se)
    missing = _no_interval(se, n, unit)
    if missing or df is None:
        est.method += f"; {missing or 'no degrees of freedom'}"
        return est
    h = stats.t_quantile(df) * se
    est.ratio_ci95 = [math.exp(mc - mb - h), math.exp(mc - mb + h)]
    est.delta_ci95 = [gb * (r - 1) for r in est.ratio_ci95]
    est.extra["delta_stderr"] = gb * ratio * se
    return est


def _paired_log(name: str, b: list[float], c: list[float]) -> _Est:
    if min(b + c) <= 0:
        raise ValueError(f"{name}: log-scale pairs need positive samples")
    lb, lc = [math.log(x) for x in b], [math.log(x) for x in c]
    d = [y - x for x, y in zip(lb, lc, strict=True)]
    n = len(d)
    how = (
        f"paired over {n} alternating process pairs: ratio = exp(mean per-pair log ratio), "
        f"Student-t interval (df {n - 1}); columns are geometric means"
    )
    est = _log_est(lb, lc, stats.stderr_of_mean(d), n - 1 or None, n, how, True, "log", "pairs")
    hl = stats.hodges_lehmann(d)
    if hl is not None:
        e, (lo, hi), cov = hl
        est.method += (
            f"; distribution-free check: Hodges-Lehmann ratio {math.exp(e):.4g} "
            f"[{math.exp(lo):.4g}, {math.exp(hi):.4g}] (Wilcoxon signed-rank interval, "
            f"coverage {cov:.1%})"
        )
    return est


def _paired_perplexity(b: list[float], c: list[float]) -> _Est:
    d = [y - x for x, y in zip(b, c, strict=True)]
    n = len(d)
    how = (
        f"paired over {n} windows: ratio = exp(mean per-window NLL difference), Student-t "
        f"interval (df {n - 1})"
    )
    return _log_est(b, c, stats.stderr_of_mean(d), n - 1 or None, n, how, True, "perplexity",
                    "windows")  # fmt: skip


def _cov(x: list[float], y: list[float]) -> float:
    mx, my = stats.mean(x), stats.mean(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / (len(x) - 1)


def _mean_est(mb, mc, vb, vc, cov, se_d, df, n, how, paired, unit) -> _Est:
    """Means: delta with a t-interval, ratio mc/mb with Fieller's interval. vb, vc, cov are
    the variances / covariance of the two estimated means."""
    ratio = mc / mb if mb else None
    est = _Est(mb, mc, mc - mb, ratio, how, paired)
    log_se = None
    if ratio is not None and ratio > 0 and se_d:
        log_se = math.sqrt(max(vc / mc**2 + vb / mb**2 - 2 * cov / (mb * mc), 0.0))
    est.extra = dict(scale="mean", n=n, df=df, delta_stderr=se_d, log_ratio_stderr=log_se)
    missing = _no_interval(se_d, n, unit, max(abs(mb), abs(mc)))
    if missing or df is None:
        est.method += f"; {missing or 'no degrees of freedom'}"
        return est
    tq = stats.t_quantile(df)
    est.delta_ci95 = [mc - mb - tq * se_d, mc - mb + tq * se_d]
    est.ratio_ci95 = stats.fieller(mb, mc, vb, vc, cov, tq) if ratio is not None else None
    if est.ratio_ci95 is None:
        est.method += "; ratio interval unbounded (baseline mean not distinguishable from 0)"
    return est


def _paired_mean(b: list[float], c: list[float]) -> _Est:
    n = len(b)
    d = [y - x for x, y in zip(b, c, strict=True)]
    how = (
        f"paired over {n} windows: delta = mean per-window difference (Student-t, df "
        f"{n - 1}); ratio of the paired means with Fieller's interval"
    )
    if n < 2:
        return _mean_est(b[0], c[0], 0, 0, 0, None, None, n, how, True, "window")
    vb, vc = _cov(b, b) / n, _cov(c, c) / n
    return _mean_est(stats.mean(b), stats.mean(c), vb, vc, _cov(b, c) / n,
                     stats.stderr_of_mean(d), n - 1, n, how, True, "windows")  # fmt: skip


def _as_paired(name: str, entry: Any) -> stats.Paired:
    if isinstance(entry, stats.Paired):
        pair = entry
    else:
        base, comp = entry
        pair = stats.Paired(base, comp, "perplexity" if name.endswith(".perplexity") else "mean")
    if pair.scale not in stats.SCALES:
        raise ValueError(f"{name}: unknown paired scale {pair.scale!r}; one of {stats.SCALES}")
    if len(pair.base) != len(pair.comp) or len(pair.base) == 0:
        raise ValueError(f"{name}: paired samples need equal, non-zero lengths")
    return pair


def _paired(name: str, pair: stats.Paired) -> _Est:
    b, c = [float(x) for x in pair.base], [float(x) for x in pair.comp]
    if pair.scale == "log":
        return _paired_log(name, b, c)
    if pair.scale == "perplexity":
        return _paired_perplexity(b, c)
    return _paired_mean(b, c)


def _side(m: Measurement) -> tuple[list[float], bool]:
    """(samples, exact) of one side of an unpaired comparison."""
    if stats.is_exact(m.n, m.stderr):
        return [float(m.value)], True
    xs = [float(x) for x in m.samples] if len(m.samples) == m.n else []
    return xs, False


def _independent(b: Measurement, c: Measurement) -> _Est:
    (xb, eb), (xc, ec) = _side(b), _side(c)
    if eb and ec:
        d, r = c.value - b.value, c.value / b.value if b.value else None
        est = _Est(b.value, c.value, d, r, "exact counts: no sampling uncertainty", False)
        est.delta_ci95, est.ratio_ci95 = [d, d], [r, r] if r is not None else None
        est.extra = dict(scale="exact", n=1, delta_stderr=0.0,
                         log_ratio_stderr=0.0 if r else None)  # fmt: skip
        return est
    if (len(xb) < 2 and not eb) or (len(xc) < 2 and not ec):
        d, r = c.value - b.value, c.value / b.value if b.value else None
        return _Est(b.value, c.value, d, r, "independent runs, a single reading on one side: "
                    "no interval", False)  # fmt: skip
    vb = _cov(xb, xb) if len(xb) > 1 else 0.0
    vc = _cov(xc, xc) if len(xc) > 1 else 0.0
    se, df = stats.welch(vb, len(xb), vc, len(xc))
    n = min(len(x) for x, e in ((xb, eb), (xc, ec)) if not e)
    if min(xb + xc) > 0 and b.unit not in MEAN_UNITS and not b.name.endswith(".nll"):
        lb, lc = [math.log(x) for x in xb], [math.log(x) for x in xc]
        vlb = _cov(lb, lb) if len(lb) > 1 else 0.0
        vlc = _cov(lc, lc) if len(lc) > 1 else 0.0
        se, df = stats.welch(vlb, len(lb), vlc, len(lc))
        how = (
            "independent runs: columns are geometric means; ratio of geometric means with a "
            "Welch-t interval on the logs"
        )
        return _log_est(lb, lc, se, df, n, how, False, "log", "samples (smaller side)")
    how = "independent runs: delta of means with a Welch-t interval; ratio with Fieller's"
    return _mean_est(stats.mean(xb), stats.mean(xc), vb / len(xb), vc / len(xc), 0.0, se, df,
                     n, how, False, "samples (smaller side)")  # fmt: skip


def _derived_pair(name: str, paired: dict[str, stats.Paired], b: Measurement, c: Measurement):
    """Cost per token is price / throughput sample by sample: its pairs are k / the throughput
    pairs, in the throughput's pair order (k recovered from the geometric means; it needs the
    same samples on each side, so the counts must match)."""
    base, _, sfx = name.partition("@")
    src = DERIVED_FROM.get(base)
    pair = paired.get(src + ("@" + sfx if sfx else "")) if src else None
    if pair is None or pair.scale != "log" or not (len(pair.base) == b.n == c.n):
        return None
    kb = b.value * stats.geometric_mean(pair.base)
    kc = c.value * stats.geometric_mean(pair.comp)
    return stats.Paired([kb / x for x in pair.base], [kc / x for x in pair.comp], "log")


def _unavailable(b: Measurement, c: Measurement) -> Comparison:
    return Comparison(
        metric=b.name,
        unit=b.unit,
        higher_is_better=b.higher_is_better,
        baseline=b.value,
        compressed=c.value,
        delta=None,
        ratio=None,
        paired=False,
        verdict="unknown",
        method=c.reason or b.reason or "unavailable",
    )


def compare(base: RunRecord, comp: RunRecord, paired: PairedArg | None = None) -> list[Comparison]:
    """One Comparison per metric measured in both runs (relative-only metrics skipped).
    `paired` maps a metric to its paired samples: `stats.Paired(base, comp, scale)`, or a
    legacy `(base, comp)` tuple (scale "perplexity" for *.perplexity, "mean" otherwise)."""
    pairs = {k: _as_paired(k, v) for k, v in (paired or {}).items()}
    out = []
    for b in base.measurements:
        if is_relative(b.name):
            continue
        c = comp.get(b.name)
        if c is None:
            continue
        if b.value is None or c.value is None:
            out.append(_unavailable(b, c))
            continue
        pair = pairs.get(b.name) or _derived_pair(b.name, pairs, b, c)
        est = _paired(b.name, pair) if pair is not None else _independent(b, c)
        out.append(
            Comparison(
                metric=b.name,
                unit=b.unit,
                higher_is_better=b.higher_is_better,
                baseline=est.baseline,
                compressed=est.compressed,
                delta=est.delta,
                delta_ci95=est.delta_ci95,
                ratio=est.ratio,
                ratio_ci95=est.ratio_ci95,
                paired=est.paired,
                verdict=_verdict(est.delta, est.delta_ci95, est.ratio_ci95, b.higher_is_better),
                method=est.method,
                **est.extra,
            )
        )
    return out

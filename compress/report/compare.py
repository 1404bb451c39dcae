"""Baseline vs compressed: deltas and ratios with 95% intervals on the DIFFERENCE.

Quality metrics measured on the same windows are compared pairwise (per-window differences),
which is far tighter than comparing two independent intervals. Speed and memory samples come
from separate runs: ratio intervals use the log delta method, delta intervals Welch-style.
"""

from __future__ import annotations

import math

from compress import stats
from compress.report.schema import Comparison, Measurement, RunRecord

#: metrics only defined relative to the baseline: reported, not compared
RELATIVE_ONLY = ("kld.",)


def _verdict(delta, ci, higher_is_better) -> str:
    if delta is None:
        return "unknown"
    if ci is not None:
        if ci[0] <= 0 <= ci[1]:
            return "no significant change"
        improved = (ci[0] > 0) == higher_is_better
    else:
        if delta == 0:
            return "no significant change"
        improved = (delta > 0) == higher_is_better
    return "better" if improved else "worse"


def _paired(name: str, b: Measurement, c: Measurement, pb: list[float], pc: list[float]):
    d, _, dci = stats.paired_diff(pb, pc)
    if name.endswith(".perplexity"):  # per-window NLLs; ratio of perplexities = exp(mean diff)
        ratio = math.exp(d)
        rci = [math.exp(dci[0]), math.exp(dci[1])] if dci else None
        delta = c.value - b.value
        delta_ci = [b.value * (rci[0] - 1), b.value * (rci[1] - 1)] if rci else None
        method = "paired over windows: ratio = exp(mean per-window NLL difference)"
        return delta, delta_ci, ratio, rci, method
    ratio = c.value / b.value if b.value else None
    return d, list(dci) if dci else None, ratio, None, "paired over windows: mean difference"


def _independent(b: Measurement, c: Measurement):
    delta = c.value - b.value
    ratio = c.value / b.value if b.value else None
    if len(b.samples) >= 2 and len(c.samples) >= 2:
        r, rci = stats.log_ratio_ci(b.samples, c.samples)
        _, sb, _ = stats.mean_ci(b.samples)
        _, sc, _ = stats.mean_ci(c.samples)
        h = stats.t_quantile_975(min(len(b.samples), len(c.samples)) - 1) * math.hypot(sb, sc)
        dm = stats.mean(c.samples) - stats.mean(b.samples)
        method = (
            "independent runs: ratio of means with a log delta-method interval; "
            "delta of means with a Welch-style interval"
        )
        return dm, [dm - h, dm + h], r, list(rci) if rci else None, method
    if (b.stderr in (0, 0.0)) and (c.stderr in (0, 0.0)):
        exact = "exact counts: no sampling uncertainty"
        return delta, [delta, delta], ratio, [ratio, ratio] if ratio else None, exact
    return delta, None, ratio, None, "single samples: no interval"


def compare(
    base: RunRecord, comp: RunRecord, paired: dict[str, tuple[list, list]] | None = None
) -> list[Comparison]:
    paired = paired or {}
    out = []
    for b in base.measurements:
        if b.name.startswith(RELATIVE_ONLY):
            continue
        c = comp.get(b.name)
        if c is None:
            continue
        if b.value is None or c.value is None:
            out.append(
                Comparison(
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
            )
            continue
        if b.name in paired:
            delta, dci, ratio, rci, method = _paired(b.name, b, c, *paired[b.name])
        else:
            delta, dci, ratio, rci, method = _independent(b, c)
        out.append(
            Comparison(
                metric=b.name,
                unit=b.unit,
                higher_is_better=b.higher_is_better,
                baseline=b.value,
                compressed=c.value,
                delta=delta,
                delta_ci95=dci,
                ratio=ratio,
                ratio_ci95=rci,
                paired=b.name in paired,
                verdict=_verdict(delta, dci, b.higher_is_better),
                method=method,
            )
        )
    return out

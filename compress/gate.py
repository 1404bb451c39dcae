"""Release gates: each threshold checked against the 95% interval of the measured difference.

pass          the whole 95% interval is on the allowed side of the threshold
fail          the whole interval is on the wrong side
inconclusive  the interval straddles the threshold, no interval exists (a single reading,
              readings with zero spread, a ratio whose interval is unbounded), or the metric
              could not be measured

A gate is never decided on a point estimate alone. The one exception is a counted value
(an exact count: n = 1 with stderr 0, e.g. weights.bytes), whose interval is the point.

Exit codes: 0 all pass, 1 any fail, 3 none failed but some inconclusive (2 is bad input).
"""

from __future__ import annotations

from compress import stats
from compress.errors import EXIT_GATE_FAILED, EXIT_INCONCLUSIVE, EXIT_OK
from compress.recipe import Gate
from compress.report.schema import Comparison, GateResult, Measurement, RunRecord

_WHAT = {
    "max_relative_increase": "relative increase",
    "max_increase": "increase",
    "max_ratio": "ratio",
    "min_ratio": "ratio",
    "max_value": "value",
    "min_value": "value",
}


def _decide(interval: list[float], threshold: float, upper: bool) -> str:
    """upper=True: the value must stay <= threshold; False: >= threshold."""
    lo, hi = interval
    ok_all = hi <= threshold if upper else lo >= threshold
    bad_all = lo > threshold if upper else hi < threshold
    return "pass" if ok_all else "fail" if bad_all else "inconclusive"


def _measurement_interval(m: Measurement) -> list[float] | None:
    if m.ci95 is not None:
        return list(m.ci95)
    if stats.is_exact(m.n, m.stderr) and m.status == "measured":
        return [m.value, m.value]
    return None


def _comparison_point(c: Comparison, kind: str) -> tuple[float | None, list[float] | None]:
    if kind == "max_relative_increase":
        if c.ratio is None:
            return None, None
        return c.ratio - 1, [r - 1 for r in c.ratio_ci95] if c.ratio_ci95 else None
    if kind == "max_increase":
        return c.delta, c.delta_ci95
    return c.ratio, c.ratio_ci95


def _result(base: dict, point, interval, explanation_head: str, why_none: str) -> GateResult:
    thr = base["threshold"]
    if interval is None:
        return GateResult(
            **base,
            status="inconclusive",
            observed=point,
            interval=None,
            explanation=f"{explanation_head} has no 95% interval ({why_none}); a gate is "
            f"decided on an interval, so it is inconclusive against threshold {thr:g}",
        )
    status = _decide(interval, thr, upper=base["kind"].startswith("max"))
    iv = f"95% CI {interval[0]:.4g} to {interval[1]:.4g}"
    return GateResult(
        **base,
        status=status,
        observed=point,
        interval=interval,
        explanation=f"{explanation_head} ({iv}) vs threshold {thr:g}",
    )


def check_gate(gate: Gate, comparison: Comparison | None, compressed: RunRecord) -> GateResult:
    kind, thr = gate.kind, gate.threshold
    base = dict(metric=gate.metric, kind=kind, threshold=thr)
    if kind in ("max_value", "min_value"):
        m = compressed.get(gate.metric)
        if m is None or m.value is None:
            why = m.reason if m is not None and m.reason else "not measured in this run"
            return _undecided(base, f"{gate.metric} unavailable: {why}")
        head = f"compressed {gate.metric} = {m.value:.4g} {m.unit}"
        return _result(base, m.value, _measurement_interval(m), head, m.method or "no interval")
    point, interval = _comparison_point(comparison, kind) if comparison else (None, None)
    if comparison is None or point is None:
        why = comparison.method if comparison is not None else "not measured in this run"
        return _undecided(base, f"{gate.metric} comparison unavailable: {why}")
    head = f"{_WHAT[kind]} {point:.4g}"
    return _result(base, point, interval, head, comparison.method or "no interval")


def _undecided(base: dict, explanation: str) -> GateResult:
    """Inconclusive: nothing to decide on (no value or no interval)."""
    return GateResult(
        **base, status="inconclusive", observed=None, interval=None, explanation=explanation
    )


def check(
    gates: list[Gate], comparisons: list[Comparison], compressed: RunRecord
) -> list[GateResult]:
    by_metric = {c.metric: c for c in comparisons}
    return [check_gate(g, by_metric.get(g.metric), compressed) for g in gates]


def exit_code(results: list[GateResult]) -> int:
    if any(r.status == "fail" for r in results):
        return EXIT_GATE_FAILED
    if any(r.status == "inconclusive" for r in results):
        return EXIT_INCONCLUSIVE
    return EXIT_OK

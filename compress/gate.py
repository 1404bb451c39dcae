"""Release gates: each threshold checked against the interval of the measured difference.

pass          the whole 95% interval is on the allowed side of the threshold
fail          the whole interval is on the wrong side
inconclusive  the interval straddles the threshold, or the metric could not be measured

Exit codes: 0 all pass, 1 any fail, 3 none failed but some inconclusive (2 is bad input).
"""

from __future__ import annotations

from compress.errors import EXIT_GATE_FAILED, EXIT_INCONCLUSIVE, EXIT_OK
from compress.recipe import Gate
from compress.report.schema import Comparison, GateResult, RunRecord


def _decide(point: float, interval: list[float] | None, threshold: float, upper: bool):
    """upper=True: the value must stay <= threshold; False: >= threshold."""
    lo, hi = interval if interval else (point, point)
    ok_all = hi <= threshold if upper else lo >= threshold
    bad_all = lo > threshold if upper else hi < threshold
    return "pass" if ok_all else "fail" if bad_all else "inconclusive"


def check_gate(gate: Gate, comparison: Comparison | None, compressed: RunRecord) -> GateResult:
    kind, thr = gate.kind, gate.threshold
    base = dict(metric=gate.metric, kind=kind, threshold=thr)
    if kind in ("max_value", "min_value"):
        m = compressed.get(gate.metric)
        if m is None or m.value is None:
            why = m.reason if m is not None and m.reason else "not measured in this run"
            return GateResult(
                **base,
                status="inconclusive",
                observed=None,
                interval=None,
                explanation=f"{gate.metric} unavailable: {why}",
            )
        status = _decide(m.value, m.ci95, thr, upper=kind == "max_value")
        return GateResult(
            **base,
            status=status,
            observed=m.value,
            interval=m.ci95,
            explanation=f"compressed {gate.metric} = {m.value:.4g} {m.unit}",
        )
    if comparison is None or comparison.delta is None or comparison.baseline in (None, 0):
        why = comparison.method if comparison is not None else "not measured in this run"
        return GateResult(
            **base,
            status="inconclusive",
            observed=None,
            interval=None,
            explanation=f"{gate.metric} comparison unavailable: {why}",
        )
    c = comparison
    if kind == "max_relative_increase":
        point = c.ratio - 1
        interval = [r - 1 for r in c.ratio_ci95] if c.ratio_ci95 else None
        if interval is None and c.delta_ci95:
            interval = [d / c.baseline for d in c.delta_ci95]
        status, what = _decide(point, interval, thr, upper=True), "relative increase"
    elif kind == "max_increase":
        point, interval = c.delta, c.delta_ci95
        status, what = _decide(point, interval, thr, upper=True), "increase"
    else:
        point, interval = c.ratio, c.ratio_ci95
        status, what = _decide(point, interval, thr, upper=kind == "max_ratio"), "ratio"
    iv = f" (95% CI {interval[0]:.4g} to {interval[1]:.4g})" if interval else " (no interval)"
    return GateResult(
        **base,
        status=status,
        observed=point,
        interval=interval,
        explanation=f"{what} {point:.4g}{iv} vs threshold {thr:g}",
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

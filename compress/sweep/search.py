"""Budgeted search (`objective: cheapest`): screen every point cheaply, measure only the
candidates fully, choose the cheapest that passes every gate.

Two rungs, as successive halving with a fixed second rung:

1. screen: every valid point with the quick eval and no timing (the part that costs most and
   is least shareable: timing holds the whole node). Its cost axis is the measured weights
   bytes ratio, which needs no timing; its quality axis the perplexity ratio - 1.
2. full: only the candidates: points on the screen's Pareto front (lowest loss for their
   weights), plus points within `margin` of the front's loss at no more weights, since the
   quick eval's few windows cannot rank close points; at most `max_candidates`, smallest
   weights first. A point whose quick eval already FAILS a quality gate is not a candidate.
   Candidates run the full eval and the paired timing of an ordinary trial.

The choice: among full trials that ran and pass every gate (exit 0), the lowest serving cost
per token (the cost summary's ratio; else the decode latency ratio). Ray Tune's schedulers
(ASHA, HyperBand) stop iterative trainings early; a trial here is not iterative (a rung is a
different evaluation budget of a deterministic function), so the rungs are two Tune grids
with this selection between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

QUALITY = "wikitext2.perplexity"
WEIGHTS = "weights.bytes"


@dataclass(frozen=True)
class Screened:
    name: str
    loss: float | None  # perplexity ratio - 1 (quick eval)
    weights: float | None  # weights bytes ratio
    quality_failed: bool  # a quality gate already fails on the quick eval
    status: str


def screened(name: str, rec: dict[str, Any] | None) -> Screened:
    """A screen trial's record as the two axes and its quality-gate state."""
    if not rec or rec.get("status") != "done":
        return Screened(name, None, None, False, (rec or {}).get("status", "not run"))
    h = rec.get("headline", {})
    ppl, w = h.get(QUALITY, {}), h.get(WEIGHTS, {})
    failed = any(
        g["status"] == "fail" and g["metric"].split("@")[0] in (QUALITY, "kld.mean")
        for g in h.get("gates", [])
    )
    loss = ppl.get("ratio") - 1 if ppl.get("ratio") is not None else None
    return Screened(name, loss, w.get("ratio"), failed, "done")


def select_candidates(
    points: list[Screened], *, margin: float, max_candidates: int
) -> dict[str, tuple[bool, str]]:
    """name -> (selected, why), for every screened point."""
    ok = [p for p in points if p.loss is not None and p.weights is not None]
    out: dict[str, tuple[bool, str]] = {}
    for p in points:
        if p.loss is None or p.weights is None:
            out[p.name] = (False, f"screen trial {p.status}: no numbers to rank")
        elif p.quality_failed:
            out[p.name] = (False, "fails a quality gate already on the quick eval")
    live = [p for p in ok if p.name not in out]
    keep = []
    for p in live:
        better = [
            q
            for q in live
            if q is not p
            and q.weights <= p.weights
            and q.loss < p.loss - margin
            and (q.weights < p.weights or q.loss < p.loss)
        ]
        if better:
            b = min(better, key=lambda q: q.loss)
            out[p.name] = (
                False,
                f"dominated: {b.name} loses {_pc(b.loss)} (vs {_pc(p.loss)}, beyond the "
                f"{_pc(margin)} margin) with {b.weights:.3f}x weights (vs {p.weights:.3f}x)",
            )
        else:
            keep.append(p)
    keep.sort(key=lambda p: (p.weights, p.loss))
    for i, p in enumerate(keep):
        if i < max_candidates:
            out[p.name] = (True, f"on or within {_pc(margin)} of the screen's front")
        else:
            out[p.name] = (False, f"near the front, but beyond max_candidates={max_candidates}")
    return out


def choose(records: dict[str, dict[str, Any]]) -> tuple[str | None, str]:
    """The cheapest full trial that passes every gate, and why (or why none)."""
    passing = {n: r for n, r in records.items() if r.get("status") == "done"}
    passing = {n: r for n, r in passing.items() if r.get("exit_code") == 0}
    if not passing:
        return None, "no candidate passed every gate in its full trial"

    def cost(rec: dict[str, Any]) -> tuple[float, str]:
        h = rec.get("headline", {})
        c = h.get("cost.usd_per_million_tokens") or {}
        if c.get("ratio") is not None:
            return c["ratio"], "serving cost per token"
        d = h.get("decode.tokens_per_s") or {}
        if d.get("ratio"):
            return 1 / d["ratio"], "decode time per token (no cost summary)"
        return float("inf"), "no cost measured"

    name = min(passing, key=lambda n: cost(passing[n])[0])
    value, basis = cost(passing[name])
    q = passing[name].get("headline", {}).get(QUALITY, {})
    loss = f", perplexity {_pc(q['ratio'] - 1)}" if q.get("ratio") is not None else ""
    others = len(passing) - 1
    return name, (
        f"the lowest {basis} among the {len(passing)} candidate(s) that pass every gate: "
        f"{value:.3f}x the baseline{loss}" + (f" ({others} other(s) passed)" if others else "")
    )


def _pc(x: float) -> str:
    return f"{100 * x:+.2f}%"

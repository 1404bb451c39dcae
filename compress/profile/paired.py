"""Paired, interleaved timing: the baseline and each variant in alternating fresh processes.

One fresh process is one sample: it loads one model, warms up, times `repeats` repeats and
reports one value per metric (medians inside the process, `compress.profile.latency`). Rounds
alternate the order (a random start, then each round reversed: A B | B A | A B ...), so slow
drift of the host (other tenants, frequency, thermal state) falls on both arms alike instead of
landing in the ratio. Across processes a metric's value is the geometric mean of its
per-process values, and a comparison uses the per-round log ratios (`stats.Paired`, scale
"log"): the value columns and the ratio come from the same statistic, and a throughput ratio
is exactly the reciprocal of the matching latency ratio.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

from compress import stats
from compress.profile.worker import profile_in_subprocess

log = logging.getLogger(__name__)


@dataclass
class Arm:
    """One model to time: a label, what to load, in which dtype, with which kernel policy."""

    label: str
    spec: str
    dtype: str
    kernel_policy: dict[str, Any] | None = None
    processes: list[dict[str, Any]] = field(default_factory=list)  # filled by profile_paired


def schedule(labels: list[str], rounds: int, seed: int) -> list[list[str]]:
    """The order of processes per round: random start, then each round reversed."""
    first = list(labels)
    random.Random(seed).shuffle(first)
    return [first if r % 2 == 0 else first[::-1] for r in range(rounds)]


def profile_paired(
    arms: list[Arm],
    cfg: Any,
    *,
    quick: bool,
    device: str,
    seed: int = 0,
    runner: Any = profile_in_subprocess,
) -> dict[str, Any]:
    """Time every arm in `rounds` rounds of fresh processes. Returns
    {"measurements": {label: [measurement dicts]}, "paired": {label: {metric: stats.Paired}}
    (each non-first arm against the first, the baseline), "context": {label: {...}},
    "protocol": {...}}."""
    rounds = int(getattr(cfg, "quick_pairs", 3) if quick else getattr(cfg, "pairs", 5))
    order = schedule([a.label for a in arms], rounds, seed)
    by_label = {a.label: a for a in arms}
    for r, labels in enumerate(order):
        for pos, label in enumerate(labels):
            arm = by_label[label]
            log.info("timing round %d/%d: %s (fresh process)", r + 1, rounds, label)
            res = runner(
                arm.spec, cfg, quick=quick, dtype=arm.dtype, device=device,
                kernel_policy=arm.kernel_policy,
            )  # fmt: skip
            res["round"], res["position"] = r, pos
            arm.processes.append(res)
    merged = {a.label: merge_processes(a.processes, rounds) for a in arms}
    base = arms[0].label
    paired = {
        a.label: _paired_samples(arms[0].processes, a.processes) for a in arms[1:] if a.processes
    }
    protocol = {
        "rounds": rounds,
        "order": order,
        "seed": seed,
        "repeats_per_process": cfg.quick_repeats if quick else cfg.repeats,
        "warmup_per_process": cfg.warmup,
        "description": (
            f"{rounds} rounds of fresh processes, one per model per round, order {order[0]} "
            "then reversed each round; each process loads its model, warms up, times its "
            "repeats and gives one value per metric; across processes the geometric mean; "
            f"ratios against '{base}' from the per-round log ratios with a t-interval"
        ),
    }
    contexts = {a.label: _context(a) for a in arms}
    return {"measurements": merged, "paired": paired, "context": contexts, "protocol": protocol}


def _values(processes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for p in processes:
        for m in p["measurements"]:
            out.setdefault(m["name"], []).append(m)
    return out


def merge_processes(processes: list[dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    """One measurement per metric from the per-process ones (see module docstring)."""
    merged = []
    for name, ms in _values(processes).items():
        first = ms[0]
        if any(m["value"] is None for m in ms):
            bad = next(m for m in ms if m["value"] is None)
            merged.append(dict(bad))
            continue
        vals = [float(m["value"]) for m in ms]
        exact = first["n"] == 1 and first.get("stderr") == 0.0  # a count, not a timing
        if exact and len(set(vals)) == 1:
            merged.append(dict(first))
            continue
        per = first["method"].replace("; single reading, no interval", "").rstrip(". ")
        how = (
            f"per process: {per}. Across {len(vals)} fresh processes "
            f"(interleaved with the other models' over {rounds} rounds): geometric mean"
        )
        if min(vals) <= 0:
            m = stats.unavailable(
                name, first["unit"], first["higher_is_better"], "a non-positive per-process value"
            )
        else:
            m = stats.log_measurement(
                name,
                vals,
                first["unit"],
                first["higher_is_better"],
                how,
                status=first.get("status", "measured"),
                reason=first.get("reason"),
            )
        merged.append(m)
    return merged


def _paired_samples(
    base: list[dict[str, Any]], comp: list[dict[str, Any]]
) -> dict[str, stats.Paired]:
    """Per-metric (baseline, variant) per-process values in round order (pairs by round)."""
    b_by_round = {p["round"]: {m["name"]: m for m in p["measurements"]} for p in base}
    out: dict[str, list[list[float]]] = {}
    for p in comp:
        bm = b_by_round.get(p["round"], {})
        for m in p["measurements"]:
            b = bm.get(m["name"])
            if b is None or b["value"] is None or m["value"] is None:
                continue
            if m["n"] == 1 and m.get("stderr") == 0.0:  # exact counts are not sampled
                continue
            if b["value"] <= 0 or m["value"] <= 0:
                continue
            pair = out.setdefault(m["name"], [[], []])
            pair[0].append(float(b["value"]))
            pair[1].append(float(m["value"]))
    return {k: stats.Paired(v[0], v[1], "log") for k, v in out.items() if len(v[0]) >= 1}


def _context(arm: Arm) -> dict[str, Any]:
    if not arm.processes:
        return {}
    ctx = dict(arm.processes[0].get("context", {}))
    ctx.pop("decode_step_ms", None)
    ctx["processes"] = [
        {
            "round": p["round"],
            "position": p["position"],
            "load_seconds": p.get("context", {}).get("load_seconds"),
            "decode_step_ms": p.get("context", {}).get("decode_step_ms", {}),
        }
        for p in arm.processes
    ]
    return ctx

"""One process's timings as measurements: the medians over its timed repeats and decode steps
(one sample of the paired protocol, see `compress.profile.paired`), peak memory and energy."""

from __future__ import annotations

from typing import Any

from compress.stats import measurement, median, unavailable


def suffix(batch_size: int) -> str:
    """Metric name suffix for a batch size: '' for 1, '@bsN' otherwise."""
    return "" if batch_size == 1 else f"@bs{batch_size}"


def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), q in [0, 1]."""
    import numpy as np

    return float(np.quantile(np.asarray(xs, dtype=float), q))


def process_measurements(
    raw: dict[str, list], *, batch_size: int, prompt_tokens: int, new_tokens: int, clock: str
) -> list[dict[str, Any]]:
    """One value per metric for THIS process (one sample of the paired protocol, see
    `compress.profile.paired`): medians over the timed repeats / decode steps after warm-up."""
    sfx = suffix(batch_size)
    shape = f"batch {batch_size}, {prompt_tokens}-token prompt"
    steps = [t for rep in raw["step_ms"] for t in rep]
    pre = median(raw["prefill_ms"])
    step50 = median(steps)
    per = f"in this process ({len(raw['prefill_ms'])} timed repeats after warm-up, {clock})"
    per_steps = f"over {len(steps)} decode steps {per}"
    one = single_measurement
    return [
        one(
            f"prefill.latency_ms{sfx}", pre, "ms", False, f"median prefill forward, {shape}, {per}"
        ),
        one(
            f"prefill.tokens_per_s{sfx}",
            batch_size * prompt_tokens / (pre / 1000.0),
            "tokens/s",
            True,
            f"batch x prompt tokens / median prefill latency ({shape}) {per}",
        ),
        one(
            f"decode.tokens_per_s{sfx}",
            batch_size * 1000.0 / step50,
            "tokens/s",
            True,
            f"batch / median one-token decode step with KV cache after a {prompt_tokens}-token "
            f"prompt, batch {batch_size}, {per_steps}",
        ),
        one(
            f"decode.latency_ms_per_token{sfx}",
            step50,
            "ms",
            False,
            f"p50 of the one-token decode step time, batch {batch_size}, {per_steps}",
        ),
        one(
            f"decode.latency_ms_p90{sfx}",
            quantile(steps, 0.9),
            "ms",
            False,
            f"p90 of the decode step time, batch {batch_size}, {per_steps}",
        ),
        one(
            f"decode.latency_ms_p99{sfx}",
            quantile(steps, 0.99),
            "ms",
            False,
            f"p99 of the decode step time, batch {batch_size}, {per_steps}",
        ),
        one(
            f"e2e.tokens_per_s{sfx}",
            median([batch_size * new_tokens / s for s in raw["e2e_s"]]),
            "tokens/s",
            True,
            f"a batch of {batch_size} request(s): {new_tokens} generated tokens each / wall time "
            f"of prefill + decode, median {per}",
        ),
    ]


def single_measurement(
    name: str, value: float, unit: str, hib: bool, method: str
) -> dict[str, Any]:
    return measurement(name, [value], unit, hib, method)


def memory_measurements(sfx: str, cuda: bool, peak_a: list, peak_b: list) -> list[dict]:
    if cuda:
        return [
            single_measurement(
                f"memory.peak_allocated_bytes{sfx}",
                max(peak_a),
                "bytes",
                False,
                "torch.cuda.max_memory_allocated over the timed repeats in this process",
            ),
            single_measurement(
                f"memory.peak_reserved_bytes{sfx}",
                max(peak_b),
                "bytes",
                False,
                "torch.cuda.max_memory_reserved over the timed repeats in this process",
            ),
        ]
    return [
        single_measurement(
            f"memory.peak_rss_bytes{sfx}",
            max(peak_a),
            "bytes",
            False,
            "peak process RSS (the kernel's VmHWM, reset at each timed repeat; 5 ms samples where "
            "the kernel has no such counter) "
            "during the timed repeats in this process",
        )
    ]


def energy_measurement(
    sfx: str, jpt: list[float], results: list[Any], steps: int, batch_size: int
) -> dict[str, Any]:
    name = f"energy.joules_per_token{sfx}"
    if not jpt:
        reasons = sorted({r.reason for r in results if r is not None and r.reason})
        return unavailable(name, "J/token", False, "; ".join(reasons) or "no energy reading")
    first = results[0]
    how = {
        "measured": "energy read around each timed decode loop",
        "estimated": "stated power x decode wall time",
    }.get(first.status, "energy")
    m = measurement(
        name,
        [median(jpt)],
        "J/token",
        False,
        f"{how} ({first.source}) / (batch {batch_size} x {steps} decode tokens), median over "
        f"{len(jpt)} timed repeats in this process",
        status=first.status,
        reason=first.reason,
    )
    return m

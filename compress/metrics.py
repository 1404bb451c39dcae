"""Metric names a gate may name, which way each is better, and which gate kinds fit it.

Pure Python (no torch, no pydantic): `compress validate` checks gates with it. The evaluators
and the profiler write exactly these names; speed, memory, energy and cost metrics ("workload"
metrics) may carry one suffix naming the batch size or prompt length they were measured at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from compress.errors import did_you_mean


@dataclass(frozen=True)
class Metric:
    """What a metric means and which way is better; `workload` metrics depend on the batch
    size / prompt length they were measured at, so a gate may name them with a suffix."""

    description: str
    higher_is_better: bool
    workload: bool = False


#: Base metric names a gate may name: "<group>.<measure>" -> Metric. `e2e.tokens_per_s` is
#: generated tokens / wall time of prefill + decode for one batch of requests. Workload
#: metrics also take one suffix: `<base>@bs<N>` (batch size N) or `<base>@p<N>` (prompt
#: length N), e.g. `decode.tokens_per_s@bs8`, `prefill.tokens_per_s@p512`.
KNOWN_METRICS: dict[str, Metric] = {
    name: Metric(description, higher_is_better=better == "higher", workload=workload)
    for name, better, workload, description in (
        ("wikitext2.perplexity", "lower", False, "WikiText-2 test perplexity"),
        ("wikitext2.nll", "lower", False, "mean token negative log-likelihood, nats"),
        ("kld.mean", "lower", False, "mean KL(baseline || compressed) per token, nats"),
        ("kld.top1_agreement", "higher", False, "share of tokens whose argmax matches"),
        ("decode.tokens_per_s", "higher", True, "decode throughput (batch 1 unless @bsN)"),
        ("decode.latency_ms_per_token", "lower", True, "decode step time, median (p50)"),
        ("decode.latency_ms_p90", "lower", True, "decode step time, 90th percentile"),
        ("decode.latency_ms_p99", "lower", True, "decode step time, 99th percentile"),
        ("prefill.latency_ms", "lower", True, "prefill latency for the profile prompt"),
        ("prefill.tokens_per_s", "higher", True, "prefill throughput"),
        ("e2e.tokens_per_s", "higher", True, "generated tokens / (prefill + decode) time"),
        ("memory.peak_rss_bytes", "lower", True, "peak process memory while generating, CPU"),
        ("memory.peak_allocated_bytes", "lower", True, "peak torch.cuda allocated memory"),
        ("memory.peak_reserved_bytes", "lower", True, "peak torch.cuda reserved memory"),
        ("memory.rss_after_load_bytes", "lower", False, "process memory after loading the model"),
        ("weights.bytes", "lower", False, "bytes of weights as held in memory"),
        ("disk.artifact_bytes", "lower", False, "size of the model files on disk"),
        ("energy.joules_per_token", "lower", True, "decode energy per generated token"),
        ("cost.usd_per_million_tokens", "lower", True, "serving cost per 1M decoded tokens"),
    )
}

_SUFFIX = re.compile(r"^(?P<base>[^@]+)@(?P<kind>bs|p)(?P<n>[1-9][0-9]*)$")
_SUFFIX_MEANING = {"bs": "batch size", "p": "prompt length"}


def metric_info(name: str) -> Metric:
    """The `Metric` a gate's metric name refers to (its base's, for `@bsN` / `@pN` names).

    Raises ValueError with what was expected (and a near miss) for anything else."""
    if name in KNOWN_METRICS:
        return KNOWN_METRICS[name]
    base, _, suffix = name.partition("@")
    if base not in KNOWN_METRICS:
        raise ValueError(
            f"unknown metric '{name}'{did_you_mean(base, KNOWN_METRICS)}; expected one of: "
            f"{', '.join(KNOWN_METRICS)} (speed, memory, energy and cost metrics may add "
            "@bs<N> or @p<N>)"
        )
    m = _SUFFIX.match(name)
    if m is None:
        raise ValueError(
            f"unknown suffix '@{suffix}' in metric '{name}'; expected @bs<N> (batch size) or "
            f"@p<N> (prompt length) with N a positive integer, e.g. {base}@bs8"
        )
    info = KNOWN_METRICS[base]
    if not info.workload:
        raise ValueError(
            f"metric '{base}' does not depend on the {_SUFFIX_MEANING[m['kind']]}, so it takes "
            f"no '@{suffix}' suffix; name it '{base}'"
        )
    return info


#: threshold kind -> (direction it only makes sense for, what it means)
_DIRECTIONAL = {
    "max_relative_increase": (False, "caps how much the metric may grow"),
    "max_increase": (False, "caps how much the metric may grow"),
    "max_ratio": (False, "caps compressed / baseline from above"),
    "min_ratio": (True, "demands compressed / baseline at least this high"),
}


def direction_problem(kind: str, metric: str, info: Metric) -> str | None:
    """Why a `kind` threshold contradicts `metric`'s direction, or None if it does not."""
    if kind not in _DIRECTIONAL:
        return None  # max_value / min_value: absolute bounds make sense either way
    wants_higher, means = _DIRECTIONAL[kind]
    if info.higher_is_better == wants_higher:
        return None
    better = "higher" if info.higher_is_better else "lower"
    worse = "lower" if info.higher_is_better else "higher"
    use = (
        "min_ratio or min_value"
        if info.higher_is_better
        else "max_ratio, max_relative_increase, max_increase or max_value"
    )
    return (
        f"'{kind}' {means}, but {metric} is {better}-is-better, so this gate would pass a "
        f"{worse} (worse) value and fail an improvement; use {use}"
    )

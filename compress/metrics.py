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
    """One metric, defined once: what it means, its unit, which way is better, which part of
    a run produces it (`producer`: a recipe section that must be enabled for a gate on it to
    be decidable), and whether it depends on the batch size / prompt length (`workload`: a
    gate may then name it with a suffix)."""

    description: str
    higher_is_better: bool
    workload: bool = False
    unit: str = ""
    producer: str = "stages"
    definition: str = ""
    relative: bool = False  # defined only against the baseline (a divergence): never compared


def is_relative(name: str) -> bool:
    """Whether `name` (or its base, for '@' names) is only defined against the baseline, so a
    variant reports it as a value and has no baseline-vs-variant comparison of it."""
    m = KNOWN_METRICS.get(name.partition("@")[0])
    return bool(m and m.relative)


_WINDOWS = "over the perplexity windows"
_PAIRED = (
    " Measured in fresh processes interleaved with the baseline's; each process gives one "
    "value (its median over repeats / steps), the run value is their geometric mean."
)

#: Metrics every run may produce: "<group>.<measure>" -> Metric. Producers add their own with
#: `register_metric` (eval tasks: `<task>.<metric>`). Workload metrics take one suffix:
#: `<base>@bs<N>` (batch size N) or `<base>@p<N>` (prompt length N).
KNOWN_METRICS: dict[str, Metric] = {}


def register_metric(name: str, metric: Metric) -> Metric:
    """Define a metric (once: a second, different definition of a name is an error)."""
    old = KNOWN_METRICS.get(name)
    if old is not None and old != metric:
        raise ValueError(f"metric '{name}' is already defined differently ({old.description})")
    KNOWN_METRICS[name] = metric
    return metric


for _name, _better, _workload, _unit, _producer, _description, _definition in (
    ("wikitext2.perplexity", "lower", False, "ppl", "eval.wikitext2",
     "WikiText-2 test perplexity", "exp(mean token NLL) over the scored windows."),
    ("wikitext2.nll", "lower", False, "nats/token", "eval.wikitext2",
     "mean token negative log-likelihood",
     "mean token negative log-likelihood (nats) over the same windows."),
    ("kld.mean", "lower", False, "nats/token", "eval.kld",
     "mean KL(baseline || compressed) per token",
     "mean over windows of the per-token KL(baseline || compressed) in nats, both from the "
     "full-vocabulary softmax of the same windows (baseline logits computed once)."),
    ("kld.top1_agreement", "higher", False, "fraction", "eval.kld",
     "share of tokens whose argmax matches",
     f"share of scored positions {_WINDOWS} where both models' argmax tokens agree."),
    *(
        (f"kld.{key}", "lower", False, "nats/token", "eval.kld",
         f"{label} of the per-token KL(baseline || compressed)",
         f"{label} of the per-token KL(baseline || compressed) over every token scored "
         "in the perplexity windows (linear interpolation, as llama.cpp's llama-perplexity "
         "--kl-divergence); 95% interval by a bootstrap over windows (tokens of one window "
         "are correlated).")
        for key, label in (("median", "median"), ("p90", "90th percentile"),
                           ("p95", "95th percentile"), ("p99", "99th percentile"),
                           ("p99_9", "99.9th percentile"))
    ),
    ("kld.max", "lower", False, "nats/token", "eval.kld",
     "largest per-token KL(baseline || compressed)",
     f"the largest per-token KL(baseline || compressed) {_WINDOWS}, as llama.cpp's 'Maximum "
     "KLD'; it has no interval, so a gate on it is inconclusive."),
    ("kld.same_top1", "higher", False, "fraction", "eval.kld",
     "share of tokens whose argmax matches (token-level interval)",
     f"share of scored tokens {_WINDOWS} where both models' argmax tokens agree, as "
     "llama.cpp's 'Same top p', with its binomial stderr over tokens and a Wilson interval; "
     "tokens of one window are not independent, so gate on kld.top1_agreement instead."),
    ("decode.tokens_per_s", "higher", True, "tokens/s", "profile",
     "decode throughput (batch 1 unless @bsN)",
     "greedy decode with the KV cache after the profile prompt: batch x 1000 / median step "
     "time (ms)." + _PAIRED),
    ("decode.latency_ms_per_token", "lower", True, "ms", "profile",
     "decode step time, median (p50)", "median decode step time." + _PAIRED),
    ("decode.latency_ms_p90", "lower", True, "ms", "profile",
     "decode step time, 90th percentile", "90th percentile decode step time." + _PAIRED),
    ("decode.latency_ms_p99", "lower", True, "ms", "profile",
     "decode step time, 99th percentile", "99th percentile decode step time." + _PAIRED),
    ("prefill.latency_ms", "lower", True, "ms", "profile",
     "prefill latency for the profile prompt",
     "one forward pass over the prompt (KV cache on), median over timed repeats." + _PAIRED),
    ("prefill.tokens_per_s", "higher", True, "tokens/s", "profile", "prefill throughput",
     "prompt tokens x batch / prefill latency." + _PAIRED),
    ("e2e.tokens_per_s", "higher", True, "tokens/s", "profile",
     "generated tokens / (prefill + decode) time",
     "one batch of requests: generated tokens / wall time of prefill + decode." + _PAIRED),
    ("memory.peak_rss_bytes", "lower", True, "bytes", "profile",
     "peak process memory while generating, CPU",
     "peak resident set size (VmHWM, reset before the timed phase) of a fresh process holding "
     "only that model."),
    ("memory.peak_allocated_bytes", "lower", True, "bytes", "profile",
     "peak torch.cuda allocated memory", "torch.cuda.max_memory_allocated over the timed phase."),
    ("memory.peak_reserved_bytes", "lower", True, "bytes", "profile",
     "peak torch.cuda reserved memory", "torch.cuda.max_memory_reserved over the timed phase."),
    ("memory.rss_after_load_bytes", "lower", False, "bytes", "profile",
     "process memory after loading the model", "resident set size right after loading."),
    ("weights.bytes", "lower", False, "bytes", "stages", "bytes of weights as held in memory",
     "bytes of parameters and buffers as held in memory; storage shared by tied weights "
     "counted once."),
    ("disk.artifact_bytes", "lower", False, "bytes", "stages", "size of the model files on disk",
     "baseline: the source weights file; compressed: the saved folder."),
    ("energy.joules_per_token", "lower", True, "J/token", "profile",
     "decode energy per generated token",
     "NVML (CUDA) or RAPL energy counters over the timed decode, per token; 'estimated' when "
     "derived from a stated power; 'unavailable' when no counter moved (never 0)."),
    ("cost.usd_per_million_tokens", "lower", True, "USD/1M tokens", "profile",
     "serving cost per 1M decoded tokens",
     "stated USD per device-hour / (decode tokens/s x 3600) x 1e6."),
):  # fmt: skip
    register_metric(
        _name,
        Metric(
            _description,
            _better == "higher",
            _workload,
            _unit,
            _producer,
            _definition,
            relative=_producer == "eval.kld",  # divergences from the baseline
        ),
    )


def definitions() -> dict[str, str]:
    """name -> definition text, for every report."""
    return {n: m.definition or m.description for n, m in KNOWN_METRICS.items()}


_SUFFIX = re.compile(r"^(?P<base>[^@]+)@(?P<kind>bs|p)(?P<n>[1-9][0-9]*)$")
_SUFFIX_MEANING = {"bs": "batch size", "p": "prompt length"}


def metric_info(name: str) -> Metric:
    """The `Metric` a gate's metric name refers to (its base's, for `@bsN` / `@pN` names).

    Raises ValueError with what was expected (and a near miss) for anything else."""
    if name in KNOWN_METRICS:
        return KNOWN_METRICS[name]
    base, _, suffix = name.partition("@")
    if base not in KNOWN_METRICS:
        _register_builtin_tasks()
        if name in KNOWN_METRICS:
            return KNOWN_METRICS[name]
    if base not in KNOWN_METRICS:
        raise ValueError(
            f"unknown metric '{name}'{did_you_mean(base, KNOWN_METRICS)}; expected one of: "
            f"{', '.join(KNOWN_METRICS)} (speed, memory, energy and cost metrics may add "
            "@bs<N> or @p<N>; a task's <task>.<metric> exists once eval.tasks names the task)"
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
    if info.relative:
        return (
            f"'{kind}' compares the variant with the baseline, but {metric} is already a "
            "divergence from the baseline (the baseline has no value of it); use max_value "
            "or min_value"
        )
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


_BUILTIN_TASKS: list[bool] = []


def _register_builtin_tasks() -> None:
    """The shipped eval tasks' `<task>.<metric>` names, registered on first need (once)."""
    if _BUILTIN_TASKS:
        return
    _BUILTIN_TASKS.append(True)
    from compress.evaluate.taskspec import load_specs, register_task_metrics

    for loaded in load_specs().values():
        register_task_metrics(loaded.spec)

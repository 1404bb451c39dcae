"""Run eval tasks on a baseline and any number of variants, item by item on the same items.

Each task's requests are encoded once and scored by every model; per model the metrics with
their intervals, and per variant the paired differences against the first model (the
baseline) with the flips. Measurement names are `<task>.<metric>`. The first model's raw
results are cached on disk (`results_cache`) unless `cache=False`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from torch import nn

from compress.errors import BadInput
from compress.evaluate import results_cache
from compress.evaluate.taskspec import LoadedSpec, TaskSpec, register_task_metrics

log = logging.getLogger(__name__)


def _check_fits(model: nn.Module, spec: TaskSpec) -> None:
    """A causal LM for log-likelihood tasks, an encoder for embedding similarity."""
    causal = getattr(model, "get_output_embeddings", lambda: None)() is not None
    if spec.output_type == "embedding_similarity" and causal:
        raise BadInput(
            f"Task '{spec.task}' is embedding similarity, which needs an encoder (e.g. "
            f"minilm-l6); {type(model).__name__} is a causal language model.",
            fix="Run it on an encoder model, or pick a log-likelihood task.",
        )
    if spec.output_type != "embedding_similarity" and not causal:
        raise BadInput(
            f"Task '{spec.task}' is {spec.output_type} by log-likelihood, which needs a causal "
            f"language model; {type(model).__name__} is not one (an encoder has no next-token "
            "scores).",
            fix="Run it on a causal LM, or pick an embedding task for encoders.",
        )


def _requests(spec: TaskSpec, items: list, model: nn.Module, tokenizer: Any, max_length):
    from compress.evaluate.choice import encode
    from compress.evaluate.rolling import resolve_max_length, rolling_requests

    limit = resolve_max_length(model, tokenizer, max_length)
    if spec.output_type == "loglikelihood_rolling":
        return rolling_requests(tokenizer, items, limit), limit
    try:
        return encode(tokenizer, items, spec.target_delimiter, limit), limit
    except ValueError as e:
        raise BadInput(f"Task '{spec.task}': {e}.") from None


def _score(model, spec, items, requests, tokenizer, opts: dict, desc: str) -> list:
    """Raw results of one model: [ll, greedy] per request, or a cosine per pair."""
    from compress.evaluate.embedding import cosines
    from compress.evaluate.scoring import loglikelihoods
    from compress.progress import tqdm

    total = 2 * len(items) if requests is None else len(requests)
    with tqdm(total=total, desc=desc, disable=not opts["progress"]) as bar:
        if requests is None:
            return cosines(
                model, tokenizer, [it.context for it in items], [it.pair for it in items],
                batch_size=max(opts["batch_size"], 32), device=opts["device"],
                progress=bar.update,
            )  # fmt: skip
        res = loglikelihoods(
            model, requests, batch_size=opts["batch_size"], device=opts["device"],
            progress=bar.update,
        )  # fmt: skip
    return [[ll, greedy] for ll, greedy in res]


def _per_item(spec: TaskSpec, items: list, requests: list | None, raw: list) -> dict:
    """Per-item arrays each metric is computed from."""
    from compress.evaluate.choice import item_scores
    from compress.evaluate.rolling import counts, document_nll

    kind = spec.output_type
    if kind == "embedding_similarity":
        return {"sims": raw}
    lls = [r[0] for r in raw]
    if kind == "multiple_choice":
        return item_scores(items, requests, lls)
    if kind == "loglikelihood":
        return {"nll": [-x for x in lls], "acc": [float(r[1]) for r in raw]}
    return {"nll": document_nll(items, requests, lls), **counts(items)}


_WEIGHTS = {"perplexity": None, "word_perplexity": "words", "byte_perplexity": "bytes",
            "bits_per_byte": "bytes"}  # fmt: skip


def _weights(metric: str, per: dict) -> list[float]:
    key = _WEIGHTS[metric]
    return per[key] if key else [1.0] * len(per["nll"])


def _measure(spec: TaskSpec, metric: str, per: dict, items: list, how: str, seed: int) -> dict:
    from compress.evaluate.embedding import correlation_measurement
    from compress.evaluate.item_stats import accuracy_measurement, ratio_measurement

    name = f"{spec.task}.{metric}"
    if metric in _WEIGHTS:
        return ratio_measurement(name, metric, per["nll"], _weights(metric, per), how, seed)
    if metric in ("spearman", "pearson"):
        gold = [it.score for it in items]
        return correlation_measurement(name, metric, per["sims"], gold, how, seed)
    return accuracy_measurement(name, per[metric], how)


def _pair(metric: str, base: dict, comp: dict, items: list, seed: int) -> dict:
    from compress.evaluate.embedding import paired_correlation
    from compress.evaluate.item_stats import paired_accuracy, paired_ratio

    if metric in _WEIGHTS:
        return paired_ratio(metric, base["nll"], comp["nll"], _weights(metric, base), seed)
    if metric in ("spearman", "pearson"):
        gold = [it.score for it in items]
        return paired_correlation(metric, base["sims"], comp["sims"], gold, seed)
    return paired_accuracy(base[metric], comp[metric], seed)


def _cached_score(model, label, first: bool, ctx: dict, opts: dict) -> tuple[list, str | None]:
    """Score one model, through the on-disk cache when it is the first (the baseline)."""
    args = (model, ctx["spec"], ctx["items"], ctx["requests"], ctx["tokenizer"], opts)
    desc = f"{ctx['spec'].task} ({label})"
    if not (first and opts["cache"]):
        return _score(*args, desc), None
    parts = dict(ctx["key"], model=results_cache.model_fingerprint(model, ctx["tokenizer"]))
    k = results_cache.key(parts)
    hit = results_cache.load(k)
    if hit is not None:
        log.info("%s: %s results read from the eval cache (%s)", ctx["spec"].task, label, k[:12])
        return hit, f"read from the eval cache ({k[:12]})"
    raw = _score(*args, desc)
    results_cache.store(k, parts, raw)
    return raw, None


def run_task(
    loaded: LoadedSpec,
    models: dict[str, nn.Module],
    tokenizer: Any,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
    seed: int = 0,
    max_length: int | None = None,
    cache: bool = True,
) -> dict[str, Any]:
    """One task on every model in `models` (the first is the baseline when there are more)."""
    from compress.evaluate.docs import load_docs

    spec = loaded.spec
    register_task_metrics(spec)
    data = load_docs(spec, data_dir, limit)
    first = next(iter(models.values()))
    _check_fits(first, spec)
    requests, window = (None, None)
    if spec.output_type != "embedding_similarity":
        requests, window = _requests(spec, data.items, first, tokenizer, max_length)
    opts = {"batch_size": batch_size, "device": device, "progress": progress, "cache": cache}
    key = {"spec": loaded.sha256, "data": data.sha256, "limit": limit, "max_length": window,
           "code": results_cache.code_version()}  # fmt: skip
    ctx = {"spec": spec, "items": data.items, "requests": requests, "tokenizer": tokenizer,
           "key": key}  # fmt: skip
    per: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    cached: dict[str, str] = {}
    for n, (label, model) in enumerate(models.items()):
        t0 = time.perf_counter()
        raw, note = _cached_score(model, label, n == 0, ctx, opts)
        seconds[label] = time.perf_counter() - t0
        if note:
            cached[label] = note
        per[label] = _per_item(spec, data.items, requests, raw)
    return _results(loaded, data, per, seconds, cached, requests, window, batch_size, seed)


def _results(loaded, data, per, seconds, cached, requests, window, batch_size, seed) -> dict:
    spec = loaded.spec
    how = f"zero-shot {spec.output_type}, {len(data.items)} items of {data.location}"
    if window and spec.output_type == "loglikelihood_rolling":
        how += f", rolling windows of {window} tokens"
    metrics = spec.metric_names
    measurements = {
        label: [_measure(spec, m, p, data.items, how, seed) for m in metrics]
        for label, p in per.items()
    }
    labels = list(per)
    paired = {
        label: {
            f"{spec.task}.{m}": _pair(m, per[labels[0]], per[label], data.items, seed)
            for m in metrics
        }
        for label in labels[1:]
    }
    hits = {label: {m: p[m] for m in metrics if m in p} for label, p in per.items()}
    return {
        "task": spec.task,
        "output_type": spec.output_type,
        "spec": str(loaded.path),
        "spec_sha256": loaded.sha256,
        "data": data.location,
        "data_sha256": data.sha256,
        "items": len(data.items),
        "requests": len(requests) if requests is not None else 2 * len(data.items),
        "max_length": window,
        "batch_size": batch_size,
        "seconds": seconds,
        "cached": cached,
        "measurements": measurements,
        "paired": paired,
        "hits": hits,
    }

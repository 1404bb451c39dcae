"""Run eval tasks on a baseline and any number of variants, item by item on the same items.

Each task's requests are encoded once and scored by every model; per model the metrics with
their intervals, and per variant the paired differences against the first model (the
baseline) with the flips. Measurement names are `<task>.<metric>`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from torch import nn

from compress.errors import BadInput
from compress.evaluate.taskspec import LoadedSpec, register_task_metrics

log = logging.getLogger(__name__)


def _bos(model: nn.Module, tokenizer: Any) -> int | None:
    """lm-eval's HF backend adds the BOS token for gemma models only."""
    kind = str(getattr(getattr(model, "config", None), "model_type", ""))
    return tokenizer.bos_token_id if kind.startswith("gemma") else None


def _check_causal(model: nn.Module, task: str) -> None:
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if head is None:
        raise BadInput(
            f"Task '{task}' is multiple choice by log-likelihood, which needs a causal language "
            f"model; {type(model).__name__} is not one (an encoder has no next-token scores).",
            fix="Run it on a causal LM, or pick an embedding task for encoders.",
        )


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
) -> dict[str, Any]:
    """One task on every model in `models` (the first is the baseline when there are more)."""
    from tqdm.auto import tqdm

    from compress.evaluate.choice import encode, item_scores, loglikelihoods
    from compress.evaluate.docs import load_docs
    from compress.evaluate.item_stats import accuracy_measurement, paired_accuracy

    spec = loaded.spec
    register_task_metrics(spec)
    data = load_docs(spec, data_dir, limit)
    first = next(iter(models.values()))
    _check_causal(first, spec.task)
    requests = encode(tokenizer, data.items, spec.target_delimiter, _bos(first, tokenizer))
    hits: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, float] = {}
    for label, model in models.items():
        t0 = time.perf_counter()
        with tqdm(total=len(requests), desc=f"{spec.task} ({label})", disable=not progress) as bar:
            lls = loglikelihoods(
                model, requests, batch_size=batch_size, device=device, progress=bar.update
            )
        seconds[label] = time.perf_counter() - t0
        scores = item_scores(data.items, requests, lls)
        hits[label] = {m.metric: scores[m.metric] for m in spec.metric_list}
    how = f"zero-shot {spec.output_type}, {len(data.items)} items of {data.location}"
    measurements = {
        label: [accuracy_measurement(f"{spec.task}.{m}", h, how) for m, h in per.items()]
        for label, per in hits.items()
    }
    labels = list(models)
    paired = {
        label: {
            f"{spec.task}.{m}": paired_accuracy(hits[labels[0]][m], hits[label][m], seed)
            for m in hits[label]
        }
        for label in labels[1:]
    }
    return {
        "task": spec.task,
        "spec": str(loaded.path),
        "spec_sha256": loaded.sha256,
        "data": data.location,
        "data_sha256": data.sha256,
        "items": len(data.items),
        "requests": len(requests),
        "batch_size": batch_size,
        "seconds": seconds,
        "measurements": measurements,
        "paired": paired,
        "hits": hits,
    }

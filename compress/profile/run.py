"""One profile of a loaded model: latency per batch size, memory, weights, energy.

Runs in the current process; `compress.profile.worker` runs it in a fresh one so that process
memory (RSS) belongs to one model only.
"""

from __future__ import annotations

import logging
import os
import platform
from collections import Counter
from typing import TYPE_CHECKING, Any

from compress.profile.energy import EnergyMeter
from compress.profile.latency import profile_generation, profile_prefill, suffix
from compress.profile.memory import current_rss, release_freed_memory, weight_bytes
from compress.stats import exact, measurement, unavailable

if TYPE_CHECKING:
    from compress.handle import ModelHandle
    from compress.recipe import ProfileConfig

log = logging.getLogger(__name__)

GENERATION_METRICS = (
    ("prefill.latency_ms", "ms", False),
    ("prefill.tokens_per_s", "tokens/s", True),
    ("decode.tokens_per_s", "tokens/s", True),
    ("decode.latency_ms_per_token", "ms", False),
    ("decode.latency_ms_p90", "ms", False),
    ("decode.latency_ms_p99", "ms", False),
    ("e2e.tokens_per_s", "tokens/s", True),
)


def _extra_prefill_lengths(cfg: Any) -> list[int]:
    """Prompt lengths timed as prefill alone (besides `prompt_tokens`)."""
    lengths = getattr(cfg, "prefill_lengths", None) or []
    return sorted({int(n) for n in lengths if int(n) != cfg.prompt_tokens})


def device_name(device: str) -> str:
    """Human name of the device: the GPU's name, or the CPU model from /proc/cpuinfo."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev.index or 0)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def param_dtypes(model: Any) -> dict[str, int]:
    """Parameter count per dtype, largest first (e.g. {"torch.float32": 1234})."""
    counts: Counter[str] = Counter()
    for p in model.parameters():
        counts[str(p.dtype)] += p.numel()
    return dict(counts.most_common())


def profile_model(
    handle: ModelHandle, cfg: ProfileConfig, *, quick: bool, progress: bool = True
) -> dict[str, Any]:
    """Profile `handle.model` as `cfg` says. Returns {"measurements": [...], "context": {...}}.

    Measurements: the generation metrics for every batch size (suffix '@bsN' unless N == 1),
    peak memory during the timed repeats (RSS on CPU, allocator peaks on CUDA),
    memory.rss_after_load_bytes, weights.bytes and energy.joules_per_token (batch-1 decode).
    Under `quick`, `cfg.quick_repeats` replaces `cfg.repeats`.
    """
    import torch

    release_freed_memory()
    rss_after_load = current_rss()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, device = handle.model, str(handle.device)
    repeats = cfg.quick_repeats if quick else cfg.repeats
    batch_sizes = sorted(set(cfg.batch_sizes))
    architecture = getattr(getattr(handle, "source", None), "architecture", "causal_lm")
    power_watts = getattr(cfg, "power_watts", None)

    ms: list[dict[str, Any]] = [
        measurement(
            "memory.rss_after_load_bytes",
            [rss_after_load],
            "bytes",
            False,
            "process RSS when profiling starts, right after the model was loaded and memory "
            "freed while loading was handed back to the OS (malloc_trim)",
        ),
        exact(
            "weights.bytes",
            weight_bytes(model),
            "bytes",
            False,
            "sum of parameter and buffer bytes, shared storage counted once",
        ),
    ]
    greedy: dict[str, list[int]] = {}
    step_ms: dict[str, list[float]] = {}
    meter: EnergyMeter | None = None
    if architecture != "causal_lm":
        ms += _not_generative(architecture, batch_sizes, cfg)
    else:
        meter = EnergyMeter(device, power_watts=power_watts)
        try:
            ms += _time_generation(
                handle, cfg, batch_sizes, repeats, meter, greedy, step_ms, progress
            )
        finally:
            meter.close()
        if 1 not in batch_sizes:
            ms.append(
                unavailable(
                    "energy.joules_per_token",
                    "J/token",
                    False,
                    "energy is measured on the batch-1 decode and batch size 1 was not profiled",
                )
            )

    context = _context(model, device, cfg, batch_sizes, repeats, quick)
    context.update(
        energy_source=meter.source if meter is not None else "none",
        greedy_ids=greedy,
        decode_step_ms=step_ms,
    )
    return {"measurements": ms, "context": context}


def _not_generative(architecture: str, batch_sizes: list[int], cfg: ProfileConfig) -> list[dict]:
    """Every generation metric as unavailable, saying why."""
    why = f"generation profiling needs a causal LM; this model is an {architecture}"
    ms = [
        unavailable(n + suffix(bs), u, hib, why)
        for bs in batch_sizes
        for n, u, hib in GENERATION_METRICS
    ]
    for n_tokens in _extra_prefill_lengths(cfg):
        ms += [
            unavailable(n + f"@p{n_tokens}", u, hib, why)
            for n, u, hib in GENERATION_METRICS
            if n.startswith("prefill.")
        ]
    ms.append(unavailable("energy.joules_per_token", "J/token", False, why))
    return ms


def _time_generation(
    handle: ModelHandle,
    cfg: ProfileConfig,
    batch_sizes: list[int],
    repeats: int,
    meter: EnergyMeter,
    greedy: dict[str, list[int]],
    step_ms: dict[str, list[float]],
    progress: bool,
) -> list[dict[str, Any]]:
    """Prefill + decode at every batch size (energy on batch 1), then the extra prefill
    lengths; fills `greedy` and `step_ms` per batch size for the context."""
    ms: list[dict[str, Any]] = []
    device = str(handle.device)
    limit = getattr(handle.model, "max_batch_size", None)  # e.g. llama.cpp: one KV cache
    for bs in batch_sizes:
        if limit is not None and bs > limit:
            why = f"{handle.model.runtime} decodes at most {limit} sequence(s) at once here"
            ms += [unavailable(n + suffix(bs), u, hib, why) for n, u, hib in GENERATION_METRICS]
            continue
        log.info("profiling batch size %d (%d repeats, %d warm-up)", bs, repeats, cfg.warmup)
        res = profile_generation(
            handle.model,
            handle.tokenizer,
            prompt_tokens=cfg.prompt_tokens,
            new_tokens=cfg.new_tokens,
            batch_size=bs,
            warmup=cfg.warmup,
            repeats=repeats,
            device=device,
            progress=progress,
            track_memory=True,
            energy_meter=(lambda: meter) if bs == 1 else None,
        )
        ms += res["measurements"]
        greedy[str(bs)] = res["greedy_ids"]
        step_ms[str(bs)] = [t for rep in res["raw"]["step_ms"] for t in rep]
    for n_tokens in _extra_prefill_lengths(cfg):
        ms += profile_prefill(
            handle.model,
            handle.tokenizer,
            prompt_tokens=n_tokens,
            warmup=cfg.warmup,
            repeats=repeats,
            device=device,
        )
    return ms


def _context(
    model: Any, device: str, cfg: ProfileConfig, batch_sizes: list[int], repeats: int, quick: bool
) -> dict[str, Any]:
    import torch

    return {
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "transformers_version": _transformers_version(),
        "python_version": platform.python_version(),
        "device": device,
        "device_name": device_name(device),
        "cuda": torch.device(device).type == "cuda",
        "dtype": next(iter(param_dtypes(model)), None),
        "param_dtypes": param_dtypes(model),
        "batch_sizes": batch_sizes,
        "prompt_tokens": cfg.prompt_tokens,
        "new_tokens": cfg.new_tokens,
        "decode_steps": cfg.new_tokens - 1,
        "repeats": repeats,
        "warmup": cfg.warmup,
        "quick": quick,
        "prefill_lengths": _extra_prefill_lengths(cfg),
    }


def _transformers_version() -> str | None:
    try:
        import transformers

        return transformers.__version__
    except ImportError:  # pragma: no cover
        return None

"""Prefill and decode latency of a causal LM with a hand-written greedy loop.

Per repeat: one prefill forward over a fixed prompt (`use_cache=True`), which yields the first
new token, then `new_tokens - 1` decode steps that each feed the last token with the KV cache
and yield the next. So a repeat produces exactly `new_tokens` tokens per row, the same tokens
`model.generate(max_new_tokens=new_tokens, do_sample=False)` produces (checked in the tests).
Every forward is timed on its own: CUDA events on a GPU, `time.perf_counter` on CPU.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from compress.errors import BadInput
from compress.profile.memory import RssSampler, cuda_memory
from compress.stats import measurement, median, unavailable

log = logging.getLogger(__name__)

PARAGRAPH = (
    "The history of the river valley is written in its stones. Farmers came first, clearing "
    "the oak woods along the banks and building low houses of timber and clay. Later a market "
    "town grew around the ford, with a church, a mill and a bridge that was rebuilt three "
    "times after floods. Merchants carried wool, salt and iron down to the coast, and the "
    "town records list their names, their debts and the prices they paid for grain in good "
    "years and bad. "
)


def suffix(batch_size: int) -> str:
    """Metric-name suffix for a batch size: '' for 1, '@bs8' for 8."""
    return "" if batch_size == 1 else f"@bs{batch_size}"


def build_prompt(tokenizer: Any, prompt_tokens: int) -> list[int]:
    """Exactly `prompt_tokens` ids: BOS (when the tokenizer has one) then a fixed English
    paragraph, repeated as often as needed and truncated. Deterministic for a tokenizer."""
    if tokenizer is None:
        raise BadInput("The model has no tokenizer, so no prompt can be built for profiling.")
    chunk = list(tokenizer(PARAGRAPH, add_special_tokens=False)["input_ids"])
    if not chunk:
        raise BadInput("The tokenizer turned the profiling paragraph into no tokens.")
    bos = getattr(tokenizer, "bos_token_id", None)
    ids: list[int] = [int(bos)] if bos is not None else []
    while len(ids) < prompt_tokens:
        ids.extend(int(i) for i in chunk)
    return ids[:prompt_tokens]


class _Timer:
    """Times one region: CUDA events (read after a synchronize) or perf_counter on CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self._pending: list[tuple[Any, Any]] = []
        self.ms: list[float] = []

    @contextlib.contextmanager
    def region(self):
        if self.cuda:
            import torch

            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._pending.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.ms.append((time.perf_counter() - t0) * 1000.0)

    def collect(self) -> list[float]:
        """All region times in ms (synchronizes the GPU first)."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.ms.extend(s.elapsed_time(e) for s, e in self._pending)
            self._pending.clear()
        return self.ms


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _one_repeat(model: Any, input_ids: Any, new_tokens: int, cuda: bool, meter: Any) -> dict:
    """One prefill + greedy decode. Returns prefill ms, per-step ms, generated ids (row 0)."""
    import torch

    batch = input_ids.shape[0]
    mask = torch.ones_like(input_ids)
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    prefill_t = _Timer(cuda)
    with prefill_t.region():
        out = model(input_ids=input_ids, attention_mask=mask, use_cache=True, **extra)
        nxt = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
    past = out.past_key_values
    generated = [nxt]
    step_t = _Timer(cuda)
    ones = torch.ones((batch, 1), dtype=mask.dtype, device=mask.device)
    with meter if meter is not None else contextlib.nullcontext():
        for _ in range(new_tokens - 1):
            mask = torch.cat([mask, ones], dim=1)
            with step_t.region():
                out = model(
                    input_ids=nxt, attention_mask=mask, past_key_values=past, use_cache=True
                )
                nxt = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            past = out.past_key_values
            generated.append(nxt)
        steps = step_t.collect()  # synchronizes CUDA inside the energy window
    return {
        "prefill_ms": prefill_t.collect()[0],
        "step_ms": steps,
        "ids": torch.cat(generated, dim=1)[0].tolist(),
    }


def profile_generation(
    model: Any,
    tokenizer: Any,
    *,
    prompt_tokens: int,
    new_tokens: int,
    batch_size: int = 1,
    warmup: int,
    repeats: int,
    device: str,
    progress: bool = True,
    track_memory: bool = True,
    energy_meter: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Time prefill and greedy decode; return {"measurements": [...], "greedy_ids": [...]}.

    Measurements (suffix '@bsN' for batch sizes other than 1), each from `repeats` samples after
    `warmup` untimed repeats: prefill.latency_ms, prefill.tokens_per_s, decode.tokens_per_s,
    decode.latency_ms_per_token; with `track_memory` also memory.peak_rss_bytes (CPU) or
    memory.peak_allocated_bytes / memory.peak_reserved_bytes (CUDA) per timed repeat; with
    `energy_meter` (a factory of `EnergyMeter`s, wrapped around each timed decode loop)
    energy.joules_per_token. `greedy_ids` are the `new_tokens` ids of row 0, first timed repeat.
    """
    import torch
    from tqdm.auto import tqdm

    if new_tokens < 2:
        raise BadInput(
            f"profile.new_tokens must be >= 2 (one prefill token + decode steps), got {new_tokens}."
        )
    if repeats < 1:
        raise BadInput(f"profile.repeats must be >= 1, got {repeats}.")
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_pos is not None and prompt_tokens + new_tokens > max_pos:
        raise BadInput(
            f"profile.prompt_tokens + profile.new_tokens = {prompt_tokens + new_tokens} exceeds "
            f"the model's max_position_embeddings ({max_pos}).",
            fix="Lower profile.prompt_tokens or profile.new_tokens in the recipe.",
        )
    cuda = torch.device(device).type == "cuda"
    ids = build_prompt(tokenizer, prompt_tokens)
    input_ids = torch.tensor([ids] * batch_size, dtype=torch.long, device=device)
    sfx = suffix(batch_size)
    steps = new_tokens - 1

    prefill_ms: list[float] = []
    decode_tps: list[float] = []
    step_median_ms: list[float] = []
    peak_a: list[float] = []
    peak_b: list[float] = []
    energy_jpt: list[float] = []
    energy_results: list[Any] = []
    greedy: list[int] | None = None
    was_training = getattr(model, "training", False)
    model.eval()
    bar = tqdm(
        total=warmup + repeats, desc=f"profile bs={batch_size}", disable=not progress, leave=False
    )
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                timed = i >= warmup
                meter = energy_meter() if (timed and energy_meter is not None) else None
                if timed and track_memory:
                    mem_ctx: Any = cuda_memory(device) if cuda else RssSampler()
                else:
                    mem_ctx = contextlib.nullcontext()
                with mem_ctx as mem:
                    r = _one_repeat(model, input_ids, new_tokens, cuda, meter)
                bar.update(1)
                if not timed:
                    continue
                if greedy is None:
                    greedy = r["ids"]
                prefill_ms.append(r["prefill_ms"])
                decode_s = sum(r["step_ms"]) / 1000.0
                decode_tps.append(batch_size * steps / decode_s)
                step_median_ms.append(median(r["step_ms"]))
                if track_memory:
                    if cuda:
                        peak_a.append(mem.peak_allocated)
                        peak_b.append(mem.peak_reserved)
                    else:
                        peak_a.append(mem.peak)
                if meter is not None:
                    energy_results.append(meter.result)
                    if meter.result.joules is not None:
                        energy_jpt.append(meter.result.joules / (batch_size * steps))
    finally:
        bar.close()
        if was_training:
            model.train()

    clock = "CUDA events" if cuda else "time.perf_counter"
    shape = f"batch {batch_size}, {prompt_tokens}-token prompt"
    ms = [
        measurement(
            f"prefill.latency_ms{sfx}",
            prefill_ms,
            "ms",
            False,
            f"one forward pass over a fixed {shape} with use_cache=True, timed with {clock}",
        ),
        measurement(
            f"prefill.tokens_per_s{sfx}",
            [batch_size * prompt_tokens / (t / 1000.0) for t in prefill_ms],
            "tokens/s",
            True,
            f"batch x prompt tokens / prefill latency ({shape}, {clock})",
        ),
        measurement(
            f"decode.tokens_per_s{sfx}",
            decode_tps,
            "tokens/s",
            True,
            f"greedy decode with KV cache after a {prompt_tokens}-token prompt: batch x "
            f"{steps} one-token steps / summed step time per repeat ({clock})",
        ),
        measurement(
            f"decode.latency_ms_per_token{sfx}",
            step_median_ms,
            "ms",
            False,
            f"median of the {steps} one-token decode step times per repeat, batch {batch_size} "
            f"({clock})",
        ),
    ]
    if track_memory and cuda:
        ms.append(
            measurement(
                f"memory.peak_allocated_bytes{sfx}",
                peak_a,
                "bytes",
                False,
                "torch.cuda.max_memory_allocated over one timed prefill + decode repeat",
            )
        )
        ms.append(
            measurement(
                f"memory.peak_reserved_bytes{sfx}",
                peak_b,
                "bytes",
                False,
                "torch.cuda.max_memory_reserved over one timed prefill + decode repeat",
            )
        )
    elif track_memory:
        ms.append(
            measurement(
                f"memory.peak_rss_bytes{sfx}",
                peak_a,
                "bytes",
                False,
                "peak process RSS sampled every 5 ms during one timed prefill + decode repeat",
            )
        )
    if energy_meter is not None:
        ms.append(_energy_measurement(sfx, energy_jpt, energy_results, steps, batch_size))
    return {"measurements": ms, "greedy_ids": greedy or []}


def _energy_measurement(
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
    return measurement(
        name,
        jpt,
        "J/token",
        False,
        f"{how} ({first.source}) / (batch {batch_size} x {steps} decode tokens)",
        status=first.status,
        reason=first.reason,
    )

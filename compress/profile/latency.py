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
from dataclasses import dataclass, field
from typing import Any

from compress.errors import BadInput
from compress.profile.memory import RssSampler, cuda_memory
from compress.profile.samples import (
    energy_measurement,
    memory_measurements,
    process_measurements,
    single_measurement,
    suffix,
)
from compress.stats import median

log = logging.getLogger(__name__)

PARAGRAPH = (
    "The history of the river valley is written in its stones. Farmers came first, clearing "
    "the oak woods along the banks and building low houses of timber and clay. Later a market "
    "town grew around the ford, with a church, a mill and a bridge that was rebuilt three "
    "times after floods. Merchants carried wool, salt and iron down to the coast, and the "
    "town records list their names, their debts and the prices they paid for grain in good "
    "years and bad. "
)


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
            from compress.placement import sync_all

            sync_all()  # a model over several GPUs ends its step on the last
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

    from compress.progress import tqdm

    _check_generation(model, prompt_tokens, new_tokens, repeats)
    cuda = torch.device(device).type == "cuda"
    ids = build_prompt(tokenizer, prompt_tokens)
    input_ids = torch.tensor([ids] * batch_size, dtype=torch.long, device=device)
    sfx = suffix(batch_size)
    steps = new_tokens - 1

    acc = _Repeats(cuda, track_memory, batch_size * steps)
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
                if timed:
                    acc.add(r, mem, meter)
    finally:
        bar.close()
        if was_training:
            model.train()
    clock = "CUDA events" if cuda else "time.perf_counter"
    raw = {
        "prefill_ms": acc.prefill_ms,
        "step_ms": acc.step_ms,
        "e2e_s": acc.e2e_s,
        "peak_a": acc.peak_a,
        "peak_b": acc.peak_b,
    }
    ms = process_measurements(
        raw, batch_size=batch_size, prompt_tokens=prompt_tokens, new_tokens=new_tokens, clock=clock
    )
    if track_memory:
        ms += memory_measurements(sfx, cuda, acc.peak_a, acc.peak_b)
    if energy_meter is not None:
        ms.append(energy_measurement(sfx, acc.energy_jpt, acc.energy, steps, batch_size))
    return {"measurements": ms, "greedy_ids": acc.greedy or [], "raw": raw}


def _check_generation(model: Any, prompt_tokens: int, new_tokens: int, repeats: int) -> None:
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


@dataclass
class _Repeats:
    """What the timed repeats of one `profile_generation` call collected."""

    cuda: bool
    track_memory: bool
    decoded_tokens: int  # batch size x decode steps per repeat
    prefill_ms: list[float] = field(default_factory=list)
    step_ms: list[list[float]] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    peak_a: list[float] = field(default_factory=list)
    peak_b: list[float] = field(default_factory=list)
    energy_jpt: list[float] = field(default_factory=list)
    energy: list[Any] = field(default_factory=list)
    greedy: list[int] | None = None

    def add(self, r: dict, mem: Any, meter: Any) -> None:
        if self.greedy is None:
            self.greedy = r["ids"]
        self.prefill_ms.append(r["prefill_ms"])
        self.step_ms.append(r["step_ms"])
        self.e2e_s.append((r["prefill_ms"] + sum(r["step_ms"])) / 1000.0)
        if self.track_memory:
            if self.cuda:
                self.peak_a.append(mem.peak_allocated)
                self.peak_b.append(mem.peak_reserved)
            else:
                self.peak_a.append(mem.peak)
        if meter is not None:
            self.energy.append(meter.result)
            if meter.result.joules is not None:
                self.energy_jpt.append(meter.result.joules / self.decoded_tokens)


def profile_prefill(
    model: Any,
    tokenizer: Any,
    *,
    prompt_tokens: int,
    warmup: int,
    repeats: int,
    device: str,
) -> list[dict[str, Any]]:
    """Prefill alone at batch 1 for another prompt length: `prefill.*@p<N>` for this process."""
    import torch

    cuda = torch.device(device).type == "cuda"
    ids = torch.tensor([build_prompt(tokenizer, prompt_tokens)], dtype=torch.long, device=device)
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    timer = _Timer(cuda)
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if i < warmup:
                model(input_ids=ids, use_cache=True, **extra)
                continue
            with timer.region():
                model(input_ids=ids, use_cache=True, **extra)
    times = timer.collect()
    pre = median(times)
    clock = "CUDA events" if cuda else "time.perf_counter"
    per = f"median of {len(times)} timed forwards after {warmup} warm-up in this process ({clock})"
    sfx = f"@p{prompt_tokens}"
    return [
        single_measurement(
            f"prefill.latency_ms{sfx}",
            pre,
            "ms",
            False,
            f"prefill forward, batch 1, {prompt_tokens}-token prompt, {per}",
        ),
        single_measurement(
            f"prefill.tokens_per_s{sfx}",
            prompt_tokens / (pre / 1000.0),
            "tokens/s",
            True,
            f"prompt tokens / prefill latency, batch 1, {prompt_tokens}-token prompt, {per}",
        ),
    ]

import statistics
import time
import types

import pytest
import torch

from compress.errors import BadInput
from compress.profile.latency import build_prompt, profile_generation, profile_prefill
from compress.stats import KEYS
from compress.testing import tiny_handle

EXPECTED = {
    "prefill.latency_ms": ("ms", False),
    "prefill.tokens_per_s": ("tokens/s", True),
    "decode.tokens_per_s": ("tokens/s", True),
    "decode.latency_ms_per_token": ("ms", False),
    "decode.latency_ms_p90": ("ms", False),
    "decode.latency_ms_p99": ("ms", False),
    "e2e.tokens_per_s": ("tokens/s", True),
    "memory.peak_rss_bytes": ("bytes", False),
}


@pytest.fixture(scope="module")
def handle():
    # a wider init than the default makes greedy decoding pick varied tokens
    return tiny_handle(seed=1, initializer_range=0.2)


def _run(handle, **kw):
    args = dict(prompt_tokens=16, new_tokens=4, warmup=1, repeats=2, device="cpu", progress=False)
    args.update(kw)
    return profile_generation(handle.model, handle.tokenizer, **args)


def test_prompt_is_exact_and_deterministic(handle):
    ids = build_prompt(handle.tokenizer, 16)
    assert len(ids) == 16 and ids == build_prompt(handle.tokenizer, 16)
    assert ids[0] == handle.tokenizer.bos_token_id
    assert max(ids) < handle.model.config.vocab_size
    assert len(build_prompt(handle.tokenizer, 1000)) == 1000  # paragraph repeated


def test_measurements_keys_units_directions(handle):
    """One value per metric for this process: medians over the timed repeats / steps."""
    res = _run(handle)
    ms = {m["name"]: m for m in res["measurements"]}
    assert set(ms) == set(EXPECTED)
    for name, (unit, hib) in EXPECTED.items():
        m = ms[name]
        assert tuple(m) == KEYS
        assert m["unit"] == unit and m["higher_is_better"] is hib
        assert m["n"] == 1 and len(m["samples"]) == 1 and m["status"] == "measured"
        assert m["value"] > 0 and m["ci95"] is None  # intervals come from across processes
    raw = res["raw"]
    assert len(raw["prefill_ms"]) == 2 and all(len(r) == 3 for r in raw["step_ms"])
    pre = statistics.median(raw["prefill_ms"])
    assert ms["prefill.latency_ms"]["value"] == pytest.approx(pre)
    assert ms["prefill.tokens_per_s"]["value"] == pytest.approx(16 / (pre / 1000))
    steps = [t for r in raw["step_ms"] for t in r]
    assert ms["decode.latency_ms_per_token"]["value"] == pytest.approx(statistics.median(steps))
    assert ms["decode.tokens_per_s"]["value"] == pytest.approx(1000 / statistics.median(steps))
    assert ms["decode.latency_ms_p99"]["value"] >= ms["decode.latency_ms_p90"]["value"]
    assert ms["decode.latency_ms_p90"]["value"] >= ms["decode.latency_ms_per_token"]["value"]


class _SleepyLM(torch.nn.Module):
    """A fake causal LM whose decode step takes at least `step_s` seconds: the profiler's
    formulas checked against a known duration (sleep never returns early)."""

    def __init__(self, step_s: float, vocab: int = 16):
        super().__init__()
        self.step_s, self.vocab = step_s, vocab
        self.config = types.SimpleNamespace(max_position_embeddings=1024)

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=True, **kw):
        time.sleep(self.step_s)
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
        logits[..., 5] = 1.0
        return types.SimpleNamespace(logits=logits, past_key_values=past_key_values or ())


@pytest.mark.parametrize("batch", [1, 4])
def test_known_step_duration_through_the_real_profiler(handle, batch):
    step_s = 0.02
    res = profile_generation(
        _SleepyLM(step_s),
        handle.tokenizer,
        prompt_tokens=8,
        new_tokens=5,
        batch_size=batch,
        warmup=0,
        repeats=2,
        device="cpu",
        progress=False,
        track_memory=False,
    )
    sfx = "" if batch == 1 else f"@bs{batch}"
    ms = {m["name"]: m["value"] for m in res["measurements"]}
    steps = [t for r in res["raw"]["step_ms"] for t in r]
    assert len(steps) == 2 * 4 and min(steps) >= step_s * 1000  # 4 decode steps per repeat
    step50 = statistics.median(steps)
    # tokens/s = batch / step time: never more than the sleep allows, exactly the formula
    assert ms[f"decode.tokens_per_s{sfx}"] == pytest.approx(batch * 1000 / step50)
    assert ms[f"decode.tokens_per_s{sfx}"] <= batch / step_s
    e2e = [batch * 5 / s for s in res["raw"]["e2e_s"]]
    assert ms[f"e2e.tokens_per_s{sfx}"] == pytest.approx(statistics.median(e2e))
    assert ms[f"e2e.tokens_per_s{sfx}"] <= batch * 5 / (5 * step_s)  # 1 prefill + 4 steps
    assert ms[f"prefill.tokens_per_s{sfx}"] <= batch * 8 / step_s
    assert res["greedy_ids"] == [5] * 5


def test_prefill_alone_at_another_length(handle):
    ms = {
        m["name"]: m
        for m in profile_prefill(
            _SleepyLM(0.01), handle.tokenizer, prompt_tokens=32, warmup=0, repeats=3, device="cpu"
        )
    }
    lat = ms["prefill.latency_ms@p32"]["value"]
    assert lat >= 10 and ms["prefill.tokens_per_s@p32"]["value"] == pytest.approx(32 / lat * 1000)


def test_batch_suffix_and_energy(handle):
    class Meter:  # stands in for EnergyMeter: 0.3 J per decode loop
        def __enter__(self):
            return self

        def __exit__(self, *a):
            from compress.profile.energy import EnergyResult

            self.result = EnergyResult(0.3, "measured", None, "fake", 0.01)

    res = _run(handle, batch_size=2, energy_meter=Meter)
    names = [m["name"] for m in res["measurements"]]
    assert "decode.tokens_per_s@bs2" in names and "memory.peak_rss_bytes@bs2" in names
    energy = res["measurements"][-1]
    assert energy["name"] == "energy.joules_per_token@bs2"
    assert energy["value"] == pytest.approx(0.3 / (2 * 3))  # batch 2 x 3 decode steps
    assert energy["n"] == 1  # one value for this process: the median over its repeats


def test_greedy_ids_match_hf_generate(handle):
    res = _run(handle, new_tokens=8)
    ids = build_prompt(handle.tokenizer, 16)
    with torch.inference_mode():
        out = handle.model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, 16, dtype=torch.long),
            max_new_tokens=8,
            do_sample=False,
        )
    hf = out[0, 16:].tolist()
    eos = handle.tokenizer.eos_token_id
    n = hf.index(eos) + 1 if eos in hf else len(hf)  # generate stops at EOS; we do not
    assert len(res["greedy_ids"]) == 8
    assert res["greedy_ids"][:n] == hf[:n]
    assert len(set(hf)) > 1  # the check is not vacuous


def test_too_long_for_the_model(handle):
    with pytest.raises(BadInput, match="max_position_embeddings"):
        _run(handle, prompt_tokens=250, new_tokens=10)


@pytest.mark.gpu
def test_cuda_profile_uses_cuda_events_and_allocator_peaks():
    h = tiny_handle(seed=1, initializer_range=0.2)
    h.model.to("cuda")
    res = profile_generation(
        h.model,
        h.tokenizer,
        prompt_tokens=16,
        new_tokens=4,
        warmup=1,
        repeats=2,
        device="cuda",
        progress=False,
    )
    ms = {m["name"]: m for m in res["measurements"]}
    assert "memory.peak_rss_bytes" not in ms
    assert ms["memory.peak_allocated_bytes"]["value"] > 0
    assert ms["memory.peak_reserved_bytes"]["value"] >= ms["memory.peak_allocated_bytes"]["value"]
    assert "CUDA events" in ms["decode.tokens_per_s"]["method"]
    assert ms["decode.tokens_per_s"]["value"] > 0

import pytest
import torch

from compress.errors import BadInput
from compress.profile.latency import build_prompt, profile_generation
from compress.stats import KEYS
from compress.testing import tiny_handle

EXPECTED = {
    "prefill.latency_ms": ("ms", False),
    "prefill.tokens_per_s": ("tokens/s", True),
    "decode.tokens_per_s": ("tokens/s", True),
    "decode.latency_ms_per_token": ("ms", False),
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
    res = _run(handle)
    ms = {m["name"]: m for m in res["measurements"]}
    assert set(ms) == set(EXPECTED)
    for name, (unit, hib) in EXPECTED.items():
        m = ms[name]
        assert tuple(m) == KEYS
        assert m["unit"] == unit and m["higher_is_better"] is hib
        assert m["n"] == 2 and len(m["samples"]) == 2 and m["status"] == "measured"
        assert m["value"] > 0 and m["ci95"] is not None
    pre = ms["prefill.latency_ms"]["samples"]
    tps = ms["prefill.tokens_per_s"]["samples"]
    assert tps == pytest.approx([16 / (t / 1000) for t in pre])


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

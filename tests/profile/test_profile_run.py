import pytest

from compress.profile import profile_model
from compress.stats import KEYS
from compress.testing import tiny_handle


@pytest.fixture(scope="module")
def result(profile_cfg):
    import torch

    threads = torch.get_num_threads()
    try:
        return profile_model(
            tiny_handle(),
            profile_cfg(batch_sizes=[1, 2], threads=1, prefill_lengths=[32]),
            quick=True,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)


def test_measurements(result):
    ms = {m["name"]: m for m in result["measurements"]}
    for m in ms.values():
        assert tuple(m) == KEYS
    for name in (
        "prefill.latency_ms",
        "prefill.tokens_per_s",
        "decode.tokens_per_s",
        "decode.latency_ms_per_token",
        "decode.latency_ms_p90",
        "decode.latency_ms_p99",
        "e2e.tokens_per_s",
        "memory.peak_rss_bytes",
    ):
        assert ms[name]["n"] == 1  # one value per process (medians over its 2 quick repeats)
        assert ms[name + "@bs2"]["n"] == 1
    assert ms["prefill.tokens_per_s@p32"]["value"] > 0  # prefill alone at another length
    assert "prefill.tokens_per_s@p16" not in ms  # the prompt length itself is not repeated
    w = ms["weights.bytes"]
    assert w["n"] == 1 and w["stderr"] == 0.0 and w["status"] == "measured"
    assert w["method"] == "sum of parameter and buffer bytes, shared storage counted once"
    assert ms["memory.rss_after_load_bytes"]["value"] > 0
    assert ms["memory.peak_rss_bytes"]["value"] >= ms["memory.rss_after_load_bytes"]["value"] / 2
    e = ms["energy.joules_per_token"]
    if e["status"] == "unavailable":  # this machine has no RAPL and no power_watts was given
        assert e["value"] is None and e["reason"]
    assert "energy.joules_per_token@bs2" not in ms


def test_context(result):
    c = result["context"]
    assert c["threads"] == 1
    assert c["batch_sizes"] == [1, 2] and c["repeats"] == 2 and c["quick"] is True
    assert c["prompt_tokens"] == 16 and c["new_tokens"] == 4 and c["warmup"] == 1
    assert c["dtype"] == "torch.float32" and c["device"] == "cpu"
    assert c["torch_version"] and c["device_name"]
    assert len(c["greedy_ids"]["1"]) == 4
    assert len(c["decode_step_ms"]["2"]) == 2 * 3  # repeats x decode steps, for distributions
    assert c["prefill_lengths"] == [32]


def test_stated_power_gives_estimate(profile_cfg):
    import torch

    threads = torch.get_num_threads()
    try:
        res = profile_model(
            tiny_handle(), profile_cfg(power_watts=50.0), quick=True, progress=False
        )
    finally:
        torch.set_num_threads(threads)
    e = next(m for m in res["measurements"] if m["name"] == "energy.joules_per_token")
    if res["context"]["energy_source"] == "stated-power":
        assert e["status"] == "estimated" and e["value"] > 0
        assert "power_watts x wall time" in e["reason"]
    else:  # a machine with RAPL measures instead
        assert e["status"] == "measured"


def test_batch_sizes_a_runtime_cannot_run_are_unavailable_with_the_reason(profile_cfg):
    """A runtime that decodes one sequence at a time (llama.cpp here) gets bs>1 skipped."""
    import torch

    h = tiny_handle()
    type(h.model).max_batch_size = 1
    h.model.runtime = "one-seq runtime"
    threads = torch.get_num_threads()
    try:
        res = profile_model(
            h, profile_cfg(batch_sizes=[1, 2], threads=1), quick=True, progress=False
        )
    finally:
        torch.set_num_threads(threads)
        del type(h.model).max_batch_size
    ms = {m["name"]: m for m in res["measurements"]}
    assert ms["decode.tokens_per_s"]["status"] == "measured"
    assert ms["decode.tokens_per_s@bs2"]["status"] == "unavailable"
    assert "one-seq runtime decodes at most 1" in ms["decode.tokens_per_s@bs2"]["reason"]

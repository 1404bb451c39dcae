"""compress.profile.paired: interleaved fresh processes, one sample each, paired by round."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from compress import stats
from compress.profile.paired import Arm, merge_processes, profile_paired, schedule


def test_schedule_random_start_then_reversed():
    order = schedule(["baseline", "compressed"], 4, seed=0)
    assert len(order) == 4
    assert order[1] == order[0][::-1] and order[2] == order[0] and order[3] == order[1]
    starts = {tuple(schedule(["a", "b"], 1, seed=s)[0]) for s in range(20)}
    assert starts == {("a", "b"), ("b", "a")}  # the start is randomised by the seed


def _cfg(**kw):
    base = dict(pairs=4, quick_pairs=2, repeats=3, quick_repeats=2, warmup=1)
    base.update(kw)
    return SimpleNamespace(**base)


def _fake_runner(speeds: dict[str, float], drift: float = 0.0):
    """Each call is one 'process': decode speed = the arm's speed x a drift that grows with
    every process started (the host slowing down), plus exact weight bytes."""
    calls = []

    def run(spec, cfg, *, quick, dtype, device, kernel_policy=None):
        calls.append((spec, kernel_policy))
        slow = 1.0 + drift * len(calls)
        tps = speeds[spec] / slow
        return {
            "measurements": [
                stats.measurement("decode.tokens_per_s", [tps], "tokens/s", True, "fake"),
                stats.measurement("decode.latency_ms_per_token", [1000 / tps], "ms", False, "f"),
                stats.exact("weights.bytes", 100 if spec == "b" else 25, "bytes", False, "n"),
                stats.unavailable("energy.joules_per_token", "J/token", False, "no counter"),
            ],
            "context": {"device_name": "fake", "decode_step_ms": {"1": [1.0]}},
        }

    return run, calls


def test_paired_ratio_cancels_drift_and_is_consistent():
    run, calls = _fake_runner({"b": 10.0, "c": 25.0}, drift=0.05)
    arms = [Arm("baseline", "b", "float32"), Arm("compressed", "c", "bfloat16", {"x": 1})]
    res = profile_paired(arms, _cfg(), quick=False, device="cpu", seed=1, runner=run)
    assert len(calls) == 8 and [c[1] for c in calls if c[0] == "c"] == [{"x": 1}] * 4
    assert res["protocol"]["rounds"] == 4 and len(res["protocol"]["order"]) == 4
    ms = {m["name"]: m for m in res["measurements"]["compressed"]}
    tps = ms["decode.tokens_per_s"]
    assert tps["n"] == 4 and tps["ci95"] is not None
    assert tps["value"] == pytest.approx(math.exp(sum(map(math.log, tps["samples"])) / 4))
    assert ms["weights.bytes"]["value"] == 25 and ms["weights.bytes"]["n"] == 1  # exact, kept
    assert ms["energy.joules_per_token"]["status"] == "unavailable"
    p = res["paired"]["compressed"]["decode.tokens_per_s"]
    assert isinstance(p, stats.Paired) and p.scale == "log" and len(p.base) == 4
    # with the order reversed every round, drift hits both arms nearly alike: the paired
    # ratio stays close to the true 2.5 although the speeds fell by up to 40% meanwhile
    ratio = math.exp(sum(math.log(c / b) for b, c in zip(p.base, p.comp, strict=True)) / 4)
    assert ratio == pytest.approx(2.5, rel=0.03)
    lat = res["paired"]["compressed"]["decode.latency_ms_per_token"]
    lat_ratio = math.exp(sum(math.log(c / b) for b, c in zip(lat.base, lat.comp, strict=True)) / 4)
    assert lat_ratio == pytest.approx(1 / ratio)  # reciprocal, exactly
    assert "weights.bytes" not in res["paired"]["compressed"]  # counts are not paired samples
    assert res["context"]["compressed"]["processes"][0]["decode_step_ms"] == {"1": [1.0]}


def test_quick_uses_quick_pairs():
    run, calls = _fake_runner({"b": 10.0, "c": 20.0})
    arms = [Arm("baseline", "b", "float32"), Arm("compressed", "c", "bfloat16")]
    res = profile_paired(arms, _cfg(), quick=True, device="cpu", runner=run)
    assert len(calls) == 4 and res["protocol"]["repeats_per_process"] == 2


def test_merge_marks_a_metric_unavailable_if_any_process_lacks_it():
    ok = stats.measurement("decode.tokens_per_s", [5.0], "tokens/s", True, "m")
    bad = stats.unavailable("decode.tokens_per_s", "tokens/s", True, "crashed kernel")
    merged = merge_processes([{"measurements": [ok]}, {"measurements": [bad]}], rounds=2)
    assert merged[0]["value"] is None and merged[0]["reason"] == "crashed kernel"

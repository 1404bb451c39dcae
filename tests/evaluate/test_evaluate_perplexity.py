"""compress.evaluate.perplexity: NLL / perplexity / KL over token windows."""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compress.errors import BadInput, ReleaseFailed
from compress.evaluate.divergence import (
    PERCENTILES,
    bootstrap_percentiles,
    token_divergence,
    token_measurements,
)
from compress.evaluate.perplexity import evaluate_many, evaluate_perplexity, window_scores
from compress.gate import check
from compress.metrics import is_relative
from compress.recipe import Gate
from compress.report.compare import compare
from compress.report.schema import Measurement, RunRecord
from compress.stats import KEYS
from compress.testing import tiny_llama

WINDOWS = torch.randint(4, 100, (3, 24), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def model():
    return tiny_llama(initializer_range=0.1)


@pytest.fixture(scope="module")
def perturbed(model):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in other.model.layers:
            w = layer.mlp.down_proj.weight
            w.add_(torch.randn(w.shape, generator=g) * 0.05)
    return other


def _by_name(measurements: list[dict]) -> dict[str, dict]:
    return {m["name"]: m for m in measurements}


def _direct_nll(model, windows) -> list[float]:
    out = []
    with torch.no_grad():
        for w in windows:
            logits = model(w[None]).logits[0, :-1].float()
            out.append(float(F.cross_entropy(logits, w[1:])))
    return out


def test_same_model_gives_zero_kl_full_agreement(model):
    r = evaluate_perplexity(model, model, WINDOWS, progress=False)
    per = r["per_window"]
    assert len(per["kld"]) == 3 and all(abs(k) < 1e-6 for k in per["kld"])
    assert per["top1"] == [1.0, 1.0, 1.0]
    assert per["nll_base"] == per["nll_comp"]
    b, c = _by_name(r["baseline"]), _by_name(r["compressed"])
    assert b["wikitext2.perplexity"]["value"] == c["wikitext2.perplexity"]["value"]
    assert abs(c["kld.mean"]["value"]) < 1e-6
    assert c["kld.top1_agreement"]["value"] == 1.0
    assert c["kld.mean"]["higher_is_better"] is False
    assert c["kld.top1_agreement"]["higher_is_better"] is True
    assert r["windows"] == 3 and r["seq_len"] == 24 and r["tokens_scored"] == 3 * 23


def test_nll_matches_direct_cross_entropy_and_ppl_is_exp_mean(model):
    r = evaluate_perplexity(model, None, WINDOWS, progress=False)
    direct = _direct_nll(model, WINDOWS)
    assert r["per_window"]["nll_base"] == pytest.approx(direct, rel=1e-6, abs=1e-6)
    assert r["compressed"] == []
    b = _by_name(r["baseline"])
    nll = b["wikitext2.nll"]
    ppl = b["wikitext2.perplexity"]
    assert nll["value"] == pytest.approx(sum(direct) / 3, rel=1e-6)
    assert ppl["value"] == pytest.approx(math.exp(nll["value"]), rel=1e-12)
    # a random 128-token model predicts close to uniformly: ppl in the vicinity of 128
    assert 50 < ppl["value"] < 400
    assert ppl["samples"] == pytest.approx([math.exp(x) for x in direct], rel=1e-6)
    assert ppl["ci95"] == pytest.approx([math.exp(x) for x in nll["ci95"]], rel=1e-12)
    assert ppl["ci95"][0] < ppl["value"] < ppl["ci95"][1]
    assert nll["n"] == ppl["n"] == 3 and nll["unit"] == "nats/token"
    assert set(nll) == set(KEYS) and set(ppl) == set(KEYS)


def test_perturbed_model_gives_positive_kl(model, perturbed):
    r = evaluate_perplexity(model, perturbed, WINDOWS, progress=False)
    per = r["per_window"]
    assert all(k > 1e-5 for k in per["kld"])
    assert all(0 <= t <= 1 for t in per["top1"])
    assert per["nll_comp"] != per["nll_base"]
    assert per["nll_comp"] == pytest.approx(_direct_nll(perturbed, WINDOWS), rel=1e-6)
    c = _by_name(r["compressed"])
    assert c["kld.mean"]["value"] == pytest.approx(sum(per["kld"]) / 3)


def test_kld_disabled_has_no_kld_measurements(model, perturbed):
    r = evaluate_perplexity(model, perturbed, WINDOWS, kld=False, progress=False, name="wt")
    assert "kld" not in r["per_window"] and "top1" not in r["per_window"]
    assert sorted(_by_name(r["compressed"])) == ["wt.nll", "wt.perplexity"]
    assert sorted(_by_name(r["baseline"])) == ["wt.nll", "wt.perplexity"]


def test_window_scores_kl_against_manual_formula():
    g = torch.Generator().manual_seed(0)
    base, comp = torch.randn(700, 16, generator=g), torch.randn(700, 16, generator=g)  # > 1 chunk
    targets = torch.randint(0, 16, (700,), generator=g)
    s = window_scores(base, comp, targets)
    pb, pc = base.softmax(-1), comp.softmax(-1)
    manual = float((pb * (pb.log() - pc.log())).sum(-1).mean())
    assert s["kld"] == pytest.approx(manual, rel=1e-5)
    assert s["top1"] == pytest.approx(float((base.argmax(-1) == comp.argmax(-1)).float().mean()))
    assert s["nll_comp"] == pytest.approx(float(F.cross_entropy(comp, targets)))


class _Broken(torch.nn.Module):
    """Wraps a model; its logits are all NaN (or +inf)."""

    def __init__(self, model, value: float = float("nan")):
        super().__init__()
        self.inner, self.value = model, value

    def forward(self, ids, use_cache=False):
        out = self.inner(ids)
        out.logits = torch.full_like(out.logits, self.value)
        return out


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_logits_are_a_failed_release_naming_the_variant(model, value):
    with pytest.raises(ReleaseFailed) as ei:
        evaluate_many(model, {"int4": _Broken(model, value)}, WINDOWS[:2], progress=False)
    err = ei.value
    assert err.exit_code == 1 and err.stage == "evaluate: int4"
    assert "the int4 model gives a non-finite" in str(err) and "window 0" in str(err)
    with pytest.raises(ReleaseFailed, match="the compressed model gives a non-finite nll_comp"):
        evaluate_perplexity(model, _Broken(model), WINDOWS[:1], kld=False, progress=False)


def test_non_finite_baseline_is_bad_input_not_the_variants_fault(model):
    with pytest.raises(BadInput, match="the baseline model gives a non-finite NLL") as ei:
        evaluate_perplexity(_Broken(model), model, WINDOWS[:1], progress=False)
    assert ei.value.exit_code == 2 and ei.value.stage == "evaluate: baseline"


def test_evaluate_many_matches_pairwise_runs(model, perturbed):
    many = evaluate_many(model, {"same": model, "other": perturbed}, WINDOWS, progress=False)
    pair = evaluate_perplexity(model, perturbed, WINDOWS, progress=False)
    assert many["baseline_per_window"] == pair["per_window"]["nll_base"]
    assert many["variants"]["other"]["per_window"] == {
        k: v for k, v in pair["per_window"].items() if k != "nll_base"
    }
    same = _by_name(many["variants"]["same"]["measurements"])
    assert same["kld.mean"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert _by_name(many["variants"]["other"]["measurements"])["kld.mean"]["value"] > 0


# -- token-level divergence (llama.cpp's KL divergence statistics) --------------------------
def _constructed(positions: int = 1100, vocab: int = 12, changed: int = 800, seed: int = 0):
    """Base and compressed logits identical except at `changed` chosen positions (KL exactly
    0 elsewhere); a third of those also get a new argmax. Returns the logits, the changed
    positions and the expected per-token KL (float64) and top-1 match."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(positions, vocab, generator=g) * 2
    comp = base.clone()
    where = torch.randperm(positions, generator=g)[:changed]
    scale = torch.linspace(0.05, 3.0, changed)  # a spread of KL values, a long tail
    comp[where] += torch.randn(changed, vocab, generator=g) * scale[:, None]
    flip = where[::3]
    comp[flip, base[flip].argmin(-1)] = base[flip].max(-1).values + 5.0  # argmax moves
    pb, pc = base.double().log_softmax(-1), comp.double().log_softmax(-1)
    kl = (pb.exp() * (pb - pc)).sum(-1).numpy()
    same = (base.argmax(-1) == comp.argmax(-1)).numpy()
    return base, comp, where, kl, same


def test_token_divergence_gives_known_per_token_values():
    base, comp, where, kl, same = _constructed()  # 1100 positions: more than one chunk
    got_kl, got_same = token_divergence(base, comp)
    assert got_kl.dtype == np.float32 and got_same.dtype == np.bool_
    assert got_kl.shape == got_same.shape == (1100,)
    untouched = np.ones(1100, bool)
    untouched[where.numpy()] = False
    assert np.all(got_kl[untouched] == 0.0)  # identical logits: exactly no divergence
    assert got_kl == pytest.approx(kl, rel=1e-4, abs=1e-6)
    assert np.array_equal(got_same, same) and not same.all() and same[untouched].all()


def _windows_of(x: np.ndarray, n: int) -> list[np.ndarray]:
    return np.array_split(x, n)


def test_token_measurements_match_numpy_and_llama_cpp():
    from scipy.stats import binomtest

    *_, kl, same = _constructed()
    kls, sames = _windows_of(kl.astype(np.float32), 10), _windows_of(same, 10)
    ms = _by_name(token_measurements(kls, sames, resamples=300))
    pooled = np.concatenate(kls).astype(np.float64)
    for name, q in PERCENTILES.items():
        m = ms[name]
        assert m["value"] == pytest.approx(float(np.percentile(pooled, q)), rel=1e-12)
        assert m["n"] == 1100 and m["unit"] == "nats/token" and m["higher_is_better"] is False
        assert m["ci95"][0] <= m["value"] <= m["ci95"][1] and m["stderr"] > 0
        assert "bootstrap over windows" in m["method"] and "correlated" in m["method"]
    # llama.cpp's median: the mean of the two middle values of the sorted tokens
    s = np.sort(pooled)
    assert ms["kld.median"]["value"] == pytest.approx((s[549] + s[550]) / 2, abs=1e-15)
    top = ms["kld.max"]
    assert top["value"] == pytest.approx(float(kl.max()), rel=1e-6)
    assert top["ci95"] is None and top["stderr"] is None and "no interval" in top["method"]
    st = ms["kld.same_top1"]
    k, n = int(same.sum()), same.size
    p = k / n
    assert st["value"] == p and st["n"] == n and st["higher_is_better"] is True
    assert st["stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))  # llama.cpp's
    wilson = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert st["ci95"] == pytest.approx([wilson.low, wilson.high], rel=1e-9)
    assert "not independent" in st["method"] and "kld.top1_agreement" in st["method"]
    for m in ms.values():
        assert set(m) == set(KEYS) and m["samples"] == [] and m["status"] == "measured"
        Measurement(**m)  # the report's schema takes them as they are


def test_bootstrap_percentiles_are_exact_resamples_of_whole_windows():
    rng = np.random.default_rng(3)
    wins = [rng.gamma(0.5, 0.1 * (1 + i % 3), size=n) for i, n in enumerate((5, 40, 1, 17, 90))]
    qs = list(PERCENTILES.values())
    boot = bootstrap_percentiles(wins, qs, resamples=200, seed=7)
    picks = np.random.default_rng(7).integers(0, len(wins), size=(200, len(wins)))
    for r in range(200):  # the same draws, pooled the slow way
        pooled = np.concatenate([wins[i] for i in picks[r]])
        assert boot[r] == pytest.approx(np.percentile(pooled, qs), rel=1e-12, abs=1e-15)
    assert np.array_equal(boot, bootstrap_percentiles(wins, qs, resamples=200, seed=7))
    assert not np.array_equal(boot, bootstrap_percentiles(wins, qs, resamples=200, seed=8))


def test_bootstrap_is_fast_enough_for_a_full_run():
    rng = np.random.default_rng(0)
    wins = [rng.gamma(0.5, 0.02, size=2047).astype(np.float32) for _ in range(150)]
    t0 = time.perf_counter()
    boot = bootstrap_percentiles(wins, list(PERCENTILES.values()))
    assert boot.shape == (1000, 5) and time.perf_counter() - t0 < 5.0  # ~0.2 s here


def _old_window_kld(lb: torch.Tensor, lc: torch.Tensor) -> float:
    """KL as the window mean was computed before the per-token arrays existed."""
    kl_sum = 0.0
    for s in range(0, lb.shape[0], 512):
        b, c = F.log_softmax(lb[s : s + 512], -1), F.log_softmax(lc[s : s + 512], -1)
        kl_sum += float(F.kl_div(c, b, log_target=True, reduction="sum"))
    return kl_sum / lb.shape[0]


def test_per_token_arrays_leave_kld_mean_as_it_was(model, perturbed):
    many = evaluate_many(model, {"other": perturbed}, WINDOWS, progress=False)
    one = many["variants"]["other"]
    with torch.no_grad():
        old = [
            _old_window_kld(model(w[None]).logits[0, :-1], perturbed(w[None]).logits[0, :-1])
            for w in WINDOWS
        ]
    assert one["per_window"]["kld"] == pytest.approx(old, rel=1e-5)
    tok = one["per_token"]
    assert [a.shape for a in tok["kld"]] == [(23,)] * 3 and tok["kld"][0].dtype == np.float32
    assert [float(a.mean(dtype=np.float64)) for a in tok["kld"]] == one["per_window"]["kld"]
    assert [float(a.mean()) for a in tok["top1"]] == one["per_window"]["top1"]
    ms = _by_name(one["measurements"])
    assert ms["kld.mean"]["value"] == pytest.approx(sum(old) / 3, rel=1e-5)
    assert ms["kld.mean"]["n"] == 3  # still per window, t-interval over windows
    assert list(ms) == [
        "wikitext2.perplexity", "wikitext2.nll", "kld.mean", "kld.top1_agreement",
        "kld.median", "kld.p90", "kld.p95", "kld.p99", "kld.p99_9", "kld.max", "kld.same_top1",
    ]  # fmt: skip
    pooled = np.concatenate(tok["kld"]).astype(np.float64)
    assert ms["kld.p99"]["value"] == pytest.approx(float(np.percentile(pooled, 99)))
    assert ms["kld.max"]["value"] == float(pooled.max()) and ms["kld.max"]["n"] == 69
    assert all(is_relative(n) for n in ms if n.startswith("kld."))


def test_identical_model_has_zero_divergence_and_no_percentile_interval(model):
    many = evaluate_many(model, {"same": model}, WINDOWS, progress=False)
    ms = _by_name(many["variants"]["same"]["measurements"])
    assert ms["kld.same_top1"]["value"] == 1.0 and ms["kld.max"]["value"] == 0.0
    assert ms["kld.p99"]["value"] == 0.0 and ms["kld.p99"]["ci95"] is None
    assert "same value" in ms["kld.p99"]["method"]


def test_kld_disabled_keeps_no_per_token_arrays(model, perturbed):
    many = evaluate_many(model, {"other": perturbed}, WINDOWS, kld=False, progress=False)
    assert "per_token" not in many["variants"]["other"]


def test_gate_on_kld_p99_is_decided_by_its_bootstrap_interval(model, perturbed):
    """kld.p99 is relative-only (no baseline comparison): a max_value gate is decided on the
    variant's own bootstrap interval, as kld.mean's is on its t-interval."""
    many = evaluate_many(model, {"other": perturbed}, WINDOWS, progress=False)
    comp = RunRecord(
        label="other",
        model={},
        dtype="float32",
        measurements=[Measurement(**m) for m in many["variants"]["other"]["measurements"]],
    )
    base = RunRecord(
        label="baseline",
        model={},
        dtype="float32",
        measurements=[Measurement(**m) for m in many["baseline"]],
    )
    comps = compare(base, comp)
    assert not any(c.metric.startswith("kld.") for c in comps)
    lo, hi = comp.get("kld.p99").ci95
    assert lo < hi
    for threshold, status in ((hi * 2, "pass"), (lo / 2, "fail"), ((lo + hi) / 2, "inconclusive")):
        (r,) = check([Gate(metric="kld.p99", max_value=threshold)], comps, comp)
        assert r.status == status and r.interval == [lo, hi], (threshold, r)
    (r,) = check([Gate(metric="kld.max", max_value=1e9)], comps, comp)
    assert r.status == "inconclusive" and "no 95% interval" in r.explanation
    for kind in ("min_ratio", "max_ratio", "max_relative_increase"):  # no baseline value
        with pytest.raises(ValueError, match="already a divergence from the baseline"):
            Gate(metric="kld.p99", **{kind: 0.5})

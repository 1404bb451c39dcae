"""compress.evaluate.perplexity: NLL / perplexity / KL over token windows."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from compress.errors import BadInput, ReleaseFailed
from compress.evaluate.perplexity import evaluate_many, evaluate_perplexity, window_scores
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

"""compress.methods.{magnitude,wanda,sparsegpt} on the tiny Llama (and, needing the shared
data, on SmolLM2-135M); pruning composed with gptq."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import TypeAdapter, ValidationError
from torch import nn

from compress.errors import BadInput
from compress.methods import StageConfig, run_stage
from compress.methods.gptq import GPTQConfig
from compress.methods.magnitude import MagnitudeConfig
from compress.methods.sparsegpt import SparseGPTConfig
from compress.methods.wanda import WandaConfig
from compress.quant.modules import Int4Linear
from compress.testing import kl_per_token, snapshot, tiny_calibration, tiny_handle, unchanged

IDS = torch.randint(4, 100, (2, 48), generator=torch.Generator().manual_seed(0))
SPREAD = {"initializer_range": 0.1}
METHODS = {
    "magnitude": (run_stage, MagnitudeConfig),
    "wanda": (run_stage, WandaConfig),
    "sparsegpt": (run_stage, SparseGPTConfig),
}


def _handle():
    """The tiny Llama with a few loud input features per layer, as real activations have
    (random init has none, and then Wanda's scores are magnitude's)."""
    h = tiny_handle(**SPREAD)
    with torch.no_grad():
        for layer in h.model.model.layers:
            layer.input_layernorm.weight[:4] = 8.0
            layer.post_attention_layernorm.weight[:4] = 8.0
    return h


def _logits(h) -> torch.Tensor:
    with torch.no_grad():
        return h.model(IDS).logits.float()


def _decoder_linears(h) -> dict[str, nn.Linear]:
    return {
        n: m
        for n, m in h.model.named_modules()
        if isinstance(m, nn.Linear) and n.startswith("model.layers.")
    }


@pytest.fixture(scope="module")
def reference():
    return _logits(_handle())


@pytest.fixture(scope="module")
def pruned():
    """Each method at 50% unstructured, same calibration: (handle, record)."""
    out = {}
    for name, (apply, cfg) in METHODS.items():
        h = _handle()
        out[name] = (h, apply(h, cfg(sparsity=0.5), tiny_calibration(16, 64)))
    return out


@pytest.mark.parametrize("name", list(METHODS))
def test_half_the_weights_are_zero_and_the_record_says_no_saving(pruned, name):
    h, info = pruned[name]
    for n, lin in _decoder_linears(h).items():
        assert float((lin.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01), n
        assert isinstance(lin, nn.Linear) and lin.weight.dtype == torch.float32
    fresh = tiny_handle(**SPREAD).model.lm_head.weight
    assert torch.equal(h.model.lm_head.weight, fresh)  # ignored by default
    assert info.details["sparsity"] == pytest.approx(0.5, abs=0.01) and info.details["layers"] == 14
    assert "saves no memory and no time" in " ".join(info.notes)
    assert f"{name} 50% unstructured" in info.summary


def test_calibrated_methods_beat_magnitude(pruned, reference):
    kl = {n: kl_per_token(reference, _logits(h)) for n, (h, _) in pruned.items()}
    assert kl["sparsegpt"] < kl["wanda"] < kl["magnitude"], kl
    assert pruned["sparsegpt"][1].details["output_error"]["max"] < 1


@pytest.mark.parametrize("name", list(METHODS))
def test_two_four_pattern(name):
    apply, cfg = METHODS[name]
    h = tiny_handle()
    info = apply(h, cfg(mask_structure="2:4"), tiny_calibration(8, 32))
    for lin in _decoder_linears(h).values():
        nz = (lin.weight != 0).reshape(lin.out_features, -1, 4).sum(-1)
        assert (nz <= 2).all() and float((nz == 2).float().mean()) > 0.99
    assert info.details["target_sparsity"] == 0.5 and "2:4" in info.summary
    assert "sparse tensor cores" in " ".join(info.notes)


def test_sparsegpt_then_gptq_keeps_the_zeros_in_int4(reference):
    h = _handle()
    calib = tiny_calibration(16, 64)
    run_stage(h, SparseGPTConfig(sparsity=0.5), calib)
    masks = {n: (m.weight == 0).clone() for n, m in _decoder_linears(h).items()}
    info = run_stage(h, GPTQConfig(bits=4, group_size=32, preserve_zeros=True), calib)
    assert any(n.startswith("preserve_zeros: the 50.0% of targeted") for n in info.notes)
    for n, mask in masks.items():
        mod = h.model.get_submodule(n)
        assert isinstance(mod, Int4Linear)
        with torch.no_grad():  # the int4 kernel's effective weight: W^T = module(I)
            w = mod(torch.eye(mod.in_features, dtype=torch.bfloat16)).float().t()
        assert (w[mask] == 0).all() and float((w == 0).float().mean()) < 0.6, n
    assert kl_per_token(reference, _logits(h)) < 0.5


def test_configs_refuse_bad_structures():
    adapter = TypeAdapter(StageConfig)
    with pytest.raises(ValidationError, match="N:M"):
        adapter.validate_python({"method": "wanda", "mask_structure": "4:2"})
    with pytest.raises(ValidationError, match="contradicts"):
        adapter.validate_python({"method": "sparsegpt", "mask_structure": "2:4", "sparsity": 0.3})
    with pytest.raises(ValidationError, match="less than 1"):
        adapter.validate_python({"method": "magnitude", "sparsity": 1.0})
    with pytest.raises(ValidationError, match="symmetric"):
        GPTQConfig(symmetric=False, preserve_zeros=True)
    ok = adapter.validate_python({"method": "sparsegpt", "mask_structure": "2:4"})
    assert ok.target_sparsity == 0.5


@pytest.mark.parametrize("name", ["wanda", "sparsegpt"])
def test_calibrated_pruning_needs_calibration(name):
    apply, cfg = METHODS[name]
    with pytest.raises(BadInput, match=f"{name} needs calibration data"):
        apply(tiny_handle(), cfg(), None)


@pytest.mark.parametrize("name", list(METHODS))
def test_bad_layers_refused_before_anything_changes(name):
    apply, cfg = METHODS[name]
    h = tiny_handle(hidden_size=48, intermediate_size=96, num_attention_heads=4)
    before = snapshot(h.model)
    with pytest.raises(BadInput, match=r"mask_structure 2:32 .* \(in_features 48\)"):
        apply(h, cfg(mask_structure="2:32"), tiny_calibration(4, 32))
    with pytest.raises(BadInput, match="match no nn.Linear"):
        apply(h, cfg(targets=["Embedding"]), tiny_calibration(4, 32))
    assert unchanged(h.model, before)


@pytest.mark.parametrize("name", ["wanda", "sparsegpt"])
def test_lm_head_target_refused(name):
    apply, cfg = METHODS[name]
    with pytest.raises(BadInput, match="outside.*lm_head"):
        apply(tiny_handle(), cfg(ignore=[]), tiny_calibration(4, 32))


@pytest.mark.integration
def test_smollm2_sparsegpt_and_wanda_beat_magnitude(shared_data):
    """50% unstructured on SmolLM2 with little calibration (8 x 256), 2 windows of 512.
    Measured 2026-11-22: base 28.23, magnitude 332.5, wanda 58.1, sparsegpt 60.6 (2048
    calibration tokens are too few for SparseGPT's 1536-wide down_proj Hessians to beat Wanda;
    benchmarks/pruning.py compares them at 128 x 512)."""
    from compress import models
    from compress.calibration.calibrate import load_calibration
    from compress.data import token_windows, wikitext2_test
    from compress.evaluate.perplexity import evaluate_perplexity
    from compress.recipe import Calibration

    base = models.load("smollm2-135m")
    windows, _, _ = token_windows(base.tokenizer, wikitext2_test(shared_data).text, 512, 2)
    calib = load_calibration(base.tokenizer, Calibration(samples=8, seq_len=256), shared_data)
    ppl = {}
    for name, (apply, cfg) in METHODS.items():
        h = copy.deepcopy(base)
        apply(h, cfg(sparsity=0.5), calib)
        res = evaluate_perplexity(base.model, h.model, windows, progress=False)
        ppl[name] = res["compressed"][0]["value"]
        ppl["base"] = res["baseline"][0]["value"]
    assert ppl["base"] < min(ppl["sparsegpt"], ppl["wanda"]), ppl
    assert max(ppl["sparsegpt"], ppl["wanda"]) < 0.3 * ppl["magnitude"], ppl

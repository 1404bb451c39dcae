"""compress.methods.smoothquant on tiny models (offline), plus one real-model check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.calibration.calibrate import CalibrationData
from compress.errors import BadInput
from compress.handle import ModelHandle, ModelSource
from compress.methods import dynamic_int8, rtn, run_stage
from compress.methods.smoothquant import SmoothQuantConfig
from compress.profile.memory import weight_bytes
from compress.quant.dynamic import DynamicInt8Linear
from compress.quant.modules import Int4Linear
from compress.testing import kl_per_token, snapshot, tiny_handle, unchanged

IDS = torch.randint(4, 100, (2, 48), generator=torch.Generator().manual_seed(0))
CALIB = CalibrationData(torch.randint(4, 128, (16, 64), generator=torch.Generator().manual_seed(1)))
SPREAD = {"initializer_range": 0.1}
DECODER_SUFFIXES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _decoder_linears(model) -> list[str]:
    return [n for n, _ in model.named_modules() if n.endswith(DECODER_SUFFIXES)]


def outlier_handle() -> ModelHandle:
    """The tiny Llama with LLM-like activation outliers put in without changing its function:
    a few channels of every norm scaled up x40 and the consumers' columns scaled down x40
    (the inverse of smoothing), and likewise up_proj rows vs down_proj columns."""
    h = tiny_handle(**SPREAD)
    with torch.no_grad():
        for layer in h.model.model.layers:
            for norm, lins in (
                (layer.input_layernorm, ("q_proj", "k_proj", "v_proj")),
                (layer.post_attention_layernorm, ("gate_proj", "up_proj")),
            ):
                norm.weight[[3, 17, 40]] *= 40
                for n in lins:
                    mod = layer.self_attn if n[0] in "qkv" else layer.mlp
                    getattr(mod, n).weight[:, [3, 17, 40]] /= 40
            layer.mlp.up_proj.weight[[5, 70]] *= 40
            layer.mlp.down_proj.weight[:, [5, 70]] /= 40
    return h


def tiny_gemma3_handle(seed: int = 0) -> ModelHandle:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from compress.testing import tiny_tokenizer

    cfg = Gemma3TextConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,  # no GQA: v_proj -> o_proj is smoothed too
        head_dim=16,
        sliding_window=16,
        max_position_embeddings=256,
        initializer_range=0.1,
        pad_token_id=3,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.5)
    src = ModelSource(spec="tiny-gemma3", kind="local_dir", note="random tiny Gemma 3 (tests)")
    return ModelHandle(model, tiny_tokenizer(), src, "float32", "cpu")


# -- smoothing alone is exact ------------------------------------------------------------


@pytest.mark.parametrize("make", [outlier_handle, tiny_gemma3_handle], ids=["llama", "gemma3"])
@pytest.mark.parametrize("alpha", [0.5, 0.85])
def test_smoothing_only_preserves_outputs(make, alpha):
    h = make()
    ref = _logits(h.model)
    norms_before = {n: p.clone() for n, p in h.model.named_parameters() if "layernorm" in n}
    info = run_stage(h, SmoothQuantConfig(alpha=alpha, w8a8=False), CALIB)
    assert not any(isinstance(m, DynamicInt8Linear) for m in h.model.modules())
    assert info.details["weights_quantized"] == 0 and info.kernel == "none (float)"
    params = dict(h.model.named_parameters())
    assert any(not torch.equal(params[n], w) for n, w in norms_before.items())
    assert _rel(_logits(h.model), ref) < 1e-5


def test_gemma3_mapping_uses_pre_feedforward_norm_and_v_to_o():
    h = tiny_gemma3_handle()
    info = run_stage(h, SmoothQuantConfig(w8a8=False), CALIB)
    groups = set(info.details["per_layer"][0]["act_absmax"])
    assert groups == {
        "input_layernorm",
        "self_attn.v_proj",
        "pre_feedforward_layernorm",
        "mlp.up_proj",
    }
    assert any("(1 + w') = (1 + w) / s" in n for n in info.notes)


# -- W8A8 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def w8a8():
    h = outlier_handle()
    ref = _logits(h.model)
    ref_bytes = weight_bytes(h.model)
    info = run_stage(h, SmoothQuantConfig(), CALIB)
    return h, info, ref, ref_bytes


def test_w8a8_replaces_linears_and_shrinks(w8a8):
    h, info, ref, ref_bytes = w8a8
    names = _decoder_linears(h.model)
    assert len(names) == 14 == info.details["layers"]
    assert all(isinstance(h.model.get_submodule(n), DynamicInt8Linear) for n in names)
    assert isinstance(h.model.lm_head, nn.Linear)  # ignored by default
    assert info.kernel == "torch.ao quantized::linear_dynamic (fbgemm)"
    assert info.compute_dtype == "float32" and h.dtype == "float32"
    assert weight_bytes(h.model) < 0.45 * ref_bytes
    assert any("v_proj -> self_attn.o_proj not scaled" in n for n in info.notes)


def test_w8a8_beats_plain_dynamic_int8_on_outliers(w8a8):
    h, _, ref, _ = w8a8
    kl_sq = kl_per_token(ref, _logits(h.model))
    plain = outlier_handle()
    run_stage(plain, dynamic_int8.DynamicInt8Config())
    kl_plain = kl_per_token(ref, _logits(plain.model))
    assert 0 < kl_sq < 0.5 * kl_plain, (kl_sq, kl_plain)
    assert kl_sq < 0.02


def test_w8a8_save_load_round_trip(w8a8, tmp_path):
    from compress.quant.serialize import load_compressed, save_compressed

    h, *_ = w8a8
    back = load_compressed(save_compressed(h, tmp_path / "sq"))
    assert all(
        isinstance(back.model.get_submodule(n), DynamicInt8Linear)
        for n in _decoder_linears(back.model)
    )
    torch.testing.assert_close(_logits(back.model), _logits(h.model))


def test_lm_head_targeted_is_quantized_unsmoothed():
    h = tiny_handle(**SPREAD)
    info = run_stage(h, SmoothQuantConfig(ignore=[]), CALIB)
    assert isinstance(h.model.lm_head, DynamicInt8Linear)
    assert any("lm_head: outside the decoder layers" in n for n in info.notes)
    assert torch.isfinite(_logits(h.model)).all()


def test_smooth_then_rtn_composes():
    h = outlier_handle()
    ref = _logits(h.model)
    run_stage(h, SmoothQuantConfig(alpha=0.5, w8a8=False), CALIB)
    run_stage(h, rtn.RTNConfig(bits=4, group_size=32, symmetric=False))
    assert isinstance(h.model.model.layers[1].mlp.down_proj, Int4Linear)
    assert kl_per_token(ref, _logits(h.model)) < 0.2


# -- refusals -----------------------------------------------------------------------------


def test_unknown_architecture_raises_naming_it():
    from transformers import OPTConfig, OPTForCausalLM

    from compress.testing import tiny_tokenizer

    model = OPTForCausalLM(
        OPTConfig(
            vocab_size=128,
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            word_embed_proj_dim=64,
        )
    ).eval()
    h = ModelHandle(model, tiny_tokenizer(), ModelSource("tiny-opt", "local_dir"), "float32", "cpu")
    before = snapshot(model)
    with pytest.raises(BadInput, match=r"OPTForCausalLM.*opt"):
        run_stage(h, SmoothQuantConfig(), CALIB)
    assert unchanged(model, before)


def test_no_calibration_raises():
    h = tiny_handle()
    with pytest.raises(BadInput, match="calibration"):
        run_stage(h, SmoothQuantConfig(), None)


def test_w8a8_on_a_device_without_int8_kernels_raises_and_changes_nothing():
    h = tiny_handle()
    h.device = "mps"
    before = snapshot(h.model)
    with pytest.raises(BadInput, match="cpu and cuda"):
        run_stage(h, SmoothQuantConfig(), CALIB)
    assert unchanged(h.model, before)


def test_after_quantization_refuses_to_rescale():
    h = tiny_handle()
    run_stage(h, rtn.RTNConfig(bits=4, group_size=32, targets=["re:.*k_proj"], ignore=[]))
    with pytest.raises(BadInput, match="already quantized"):
        run_stage(h, SmoothQuantConfig(w8a8=False), CALIB)


# -- the real model ----------------------------------------------------------------------


@pytest.mark.integration
def test_smoothquant_beats_plain_w8a8_on_smollm2(shared_data):
    import copy

    from compress import models
    from compress.calibration.calibrate import load_calibration
    from compress.data import token_windows, wikitext2_test
    from compress.evaluate.perplexity import evaluate_perplexity
    from compress.recipe import Calibration

    base = models.load("smollm2-135m")
    calib = load_calibration(base.tokenizer, Calibration(samples=8, seq_len=256), shared_data)
    windows, _, _ = token_windows(base.tokenizer, wikitext2_test(shared_data).text, 512, 2)

    def ppl(h) -> tuple[float, float]:
        r = evaluate_perplexity(base.model, h.model, windows, progress=False)
        return r["baseline"][0]["value"], r["compressed"][0]["value"]

    h_plain = copy.deepcopy(base)
    run_stage(h_plain, dynamic_int8.DynamicInt8Config())
    base_ppl, plain_ppl = ppl(h_plain)
    del h_plain
    h_sq = copy.deepcopy(base)
    run_stage(h_sq, SmoothQuantConfig(alpha=0.5), calib)
    _, sq_ppl = ppl(h_sq)
    assert sq_ppl < plain_ppl, (base_ppl, sq_ppl, plain_ppl)
    assert sq_ppl - base_ppl < 0.5 * (plain_ppl - base_ppl), (base_ppl, sq_ppl, plain_ppl)

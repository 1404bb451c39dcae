"""compress.methods.awq on tiny models (offline), plus one real-model check (integration)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from compress.calibration.calibrate import CalibrationData
from compress.errors import BadInput
from compress.handle import ModelHandle, ModelSource
from compress.methods import rtn, run_stage
from compress.methods.awq import AWQConfig
from compress.profile.memory import weight_bytes
from compress.quant.modules import Int4Linear
from compress.testing import kl_per_token, snapshot, tiny_handle, unchanged

IDS = torch.randint(4, 100, (2, 48), generator=torch.Generator().manual_seed(0))
CALIB = CalibrationData(torch.randint(4, 128, (16, 64), generator=torch.Generator().manual_seed(1)))
SPREAD = {"initializer_range": 0.1}
DECODER = [
    f"model.layers.{i}.{p}"
    for i in range(2)
    for p in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
]


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


def tiny_gemma3_handle(seed: int = 0) -> ModelHandle:
    """A 2-layer Gemma 3 text model with random (1 + w) norm weights."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from compress.testing import tiny_tokenizer

    cfg = Gemma3TextConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
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


@pytest.fixture(scope="module")
def reference():
    h = tiny_handle(**SPREAD)
    return {"bytes": weight_bytes(h.model), "logits": _logits(h.model)}


@pytest.fixture(scope="module")
def awq_g32():
    h = tiny_handle(**SPREAD)
    info = run_stage(h, AWQConfig(group_size=32), CALIB)
    return h, info


def test_awq_replaces_decoder_linears_with_int4(awq_g32, reference):
    h, info = awq_g32
    m = h.model
    assert all(isinstance(m.get_submodule(n), Int4Linear) for n in DECODER)
    assert isinstance(m.lm_head, nn.Linear)  # ignored by default, still tied
    assert m.lm_head.weight is m.model.embed_tokens.weight
    assert info.method == "awq" and info.details["layers"] == len(DECODER) == 14
    assert info.details["weights_quantized"] == sum(
        m_.weight.numel() for m_ in _linears(tiny_handle())
    )
    assert info.kernel == "aten._weight_int4pack_mm_for_cpu"
    assert info.compute_dtype == "bfloat16" and h.dtype == "bfloat16"
    assert info.summary and info.notes and info.seconds > 0
    notes = " ".join(info.notes)
    assert "llama" in notes and "v_proj -> self_attn.o_proj not scaled" in notes
    assert weight_bytes(m) < 0.3 * reference["bytes"]  # the tied embedding stays (bf16)
    for rec in info.details["per_layer"]:
        assert set(rec["alpha"]) == {
            "input_layernorm",
            "post_attention_layernorm",
            "mlp.up_proj",
        }
        for rtn_mse, awq_mse in rec["search_mse"].values():
            assert awq_mse <= rtn_mse


def _linears(h) -> list[nn.Linear]:
    return [h.model.get_submodule(n) for n in DECODER]


def test_awq_outputs_close_and_closer_than_rtn(awq_g32, reference):
    h, _ = awq_g32
    kl_awq = kl_per_token(reference["logits"], _logits(h.model))
    hr = tiny_handle(**SPREAD)
    run_stage(hr, rtn.RTNConfig(bits=4, group_size=32, symmetric=False))
    kl_rtn = kl_per_token(reference["logits"], _logits(hr.model))
    assert 0 < kl_awq < 0.1, kl_awq
    assert kl_awq < kl_rtn, (kl_awq, kl_rtn)


def test_awq_save_load_round_trip(awq_g32, tmp_path):
    from compress.quant.serialize import load_compressed, save_compressed

    h, _ = awq_g32
    out = save_compressed(h, tmp_path / "awq")
    back = load_compressed(out)
    assert all(isinstance(back.model.get_submodule(n), Int4Linear) for n in DECODER)
    torch.testing.assert_close(_logits(back.model), _logits(h.model))


def test_awq_symmetric_no_clip_runs():
    h = tiny_handle(**SPREAD)
    info = run_stage(h, AWQConfig(group_size=64, symmetric=True, clip=False, grid=4), CALIB)
    assert "symmetric" in info.summary
    assert all(isinstance(h.model.get_submodule(n), Int4Linear) for n in DECODER)
    assert torch.isfinite(_logits(h.model)).all()


def test_awq_partial_targets_leave_the_rest_float():
    h = tiny_handle(**SPREAD)
    ref = _logits(h.model)
    info = run_stage(h, AWQConfig(group_size=32, targets=["re:.*mlp.*"]), CALIB)
    assert info.details["layers"] == 6
    assert isinstance(h.model.model.layers[0].self_attn.q_proj, nn.Linear)
    assert isinstance(h.model.model.layers[0].mlp.up_proj, Int4Linear)
    assert kl_per_token(ref, _logits(h.model)) < 0.05


def test_awq_lm_head_targeted_gets_rtn_and_says_so():
    h = tiny_handle(**SPREAD)
    info = run_stage(h, AWQConfig(group_size=32, ignore=[]), CALIB)
    assert isinstance(h.model.lm_head, Int4Linear)
    assert any("lm_head: outside the decoder layers" in n for n in info.notes)
    assert torch.isfinite(_logits(h.model)).all()


def test_awq_gemma3_mapping():
    h = tiny_gemma3_handle()
    ref = _logits(h.model)
    info = run_stage(h, AWQConfig(group_size=32), CALIB)
    notes = " ".join(info.notes)
    assert "gemma3" in notes and "(1 + w)" in notes and "q_norm" in notes
    assert {"input_layernorm", "pre_feedforward_layernorm", "mlp.up_proj"} == set(
        info.details["per_layer"][0]["alpha"]
    )
    layer = h.model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, Int4Linear)
    assert isinstance(layer.mlp.down_proj, Int4Linear)
    kl = kl_per_token(ref, _logits(h.model))
    assert 0 < kl < 0.1, kl


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
    with pytest.raises(BadInput, match=r"OPTForCausalLM.*opt.*known families: llama"):
        run_stage(h, AWQConfig(group_size=32), CALIB)
    assert unchanged(model, before)


def test_group_size_not_dividing_raises_and_changes_nothing():
    h = tiny_handle(hidden_size=48, intermediate_size=96, num_attention_heads=4)
    before = snapshot(h.model)
    with pytest.raises(BadInput) as ei:
        run_stage(h, AWQConfig(group_size=32), CALIB)
    msg = str(ei.value)
    assert "model.layers.0.self_attn.q_proj (in_features 48)" in msg
    assert "12 layer(s)" in msg and "down_proj" not in msg
    assert unchanged(h.model, before)
    assert not any(isinstance(m, Int4Linear) for m in h.model.modules())


def test_no_calibration_raises():
    h = tiny_handle()
    before = snapshot(h.model)
    with pytest.raises(BadInput, match="calibration"):
        run_stage(h, AWQConfig(group_size=32), None)
    assert unchanged(h.model, before)


@pytest.mark.parametrize(
    "kwargs", [{"group_size": 48}, {"bits": 8}, {"grid": 1}, {"max_shrink": 1.0}, {"x": 1}]
)
def test_config_refuses(kwargs):
    with pytest.raises(ValidationError):
        AWQConfig(**kwargs)


def test_config_defaults_and_recipe_shape():
    cfg = AWQConfig(group_size=64)
    assert cfg.symmetric is False and cfg.clip and cfg.grid == 20 and cfg.ignore == ["lm_head"]
    assert AWQConfig.needs_calibration


# -- the real model ----------------------------------------------------------------------


@pytest.mark.integration
def test_awq_beats_rtn_on_smollm2(shared_data):
    """AWQ int4 g64 against RTN int4 g64 asymmetric, 8 x 256 calibration, 2 windows of 512.
    Measured 2026-11-22: base 28.23, awq 31.91, rtn 36.19."""
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

    h_rtn = copy.deepcopy(base)
    run_stage(h_rtn, rtn.RTNConfig(bits=4, group_size=64, symmetric=False))
    base_ppl, rtn_ppl = ppl(h_rtn)
    del h_rtn
    h_awq = copy.deepcopy(base)
    info = run_stage(h_awq, AWQConfig(group_size=64), calib)
    _, awq_ppl = ppl(h_awq)
    assert any("192" in n and "576" in n for n in info.notes)  # v -> o skipped (GQA)
    assert base_ppl < awq_ppl < rtn_ppl, (base_ppl, awq_ppl, rtn_ppl)

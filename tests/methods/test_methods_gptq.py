"""compress.methods.gptq on the tiny Llama (and, marked integration, on SmolLM2-135M)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from compress.errors import BadInput, ReleaseFailed
from compress.methods import rtn, run_stage
from compress.methods.gptq import GPTQConfig
from compress.profile.memory import weight_bytes
from compress.quant.modules import Int4Linear, Int8Embedding, Int8Linear
from compress.quant.serialize import load_compressed, save_compressed
from compress.testing import kl_per_token, tiny_calibration, tiny_handle

IDS = torch.randint(4, 100, (2, 48), generator=torch.Generator().manual_seed(0))
SPREAD = {"initializer_range": 0.1}  # logits spread enough for KL to separate (see test_rtn)
DECODER = [
    f"model.layers.{i}.{s}"
    for i in range(2)
    for s in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
]


def _logits(h) -> torch.Tensor:
    with torch.no_grad():
        return h.model(IDS).logits.float()


@pytest.fixture(scope="module")
def reference():
    h = tiny_handle(**SPREAD)
    return {"bytes": weight_bytes(h.model), "logits": _logits(h)}


@pytest.fixture(scope="module")
def int4_g32(reference):
    h = tiny_handle(**SPREAD)
    info = run_stage(h, GPTQConfig(bits=4, group_size=32, batch_size=4), tiny_calibration())
    return h, info


def test_int4_layers_bytes_and_logits(reference, int4_g32):
    h, info = int4_g32
    m = h.model
    assert all(isinstance(m.get_submodule(n), Int4Linear) for n in DECODER)
    assert isinstance(m.lm_head, nn.Linear)  # ignored by default (tied to the embedding)
    assert info.method == "gptq" and info.details["layers"] == 14
    assert info.kernel == "aten._weight_int4pack_mm_for_cpu"
    assert info.details["static_groups"] is False
    assert info.details["output_error"]["max"] < 0.05
    assert len(info.details["per_layer_seconds"]) == 2
    assert h.dtype == "bfloat16" and m.model.norm.weight.dtype == torch.bfloat16
    assert weight_bytes(m) < 0.3 * reference["bytes"]  # the tied embedding stays bf16
    out = _logits(h)
    assert torch.isfinite(out).all()
    assert kl_per_token(reference["logits"], out) < 0.1


def test_gptq_closer_than_rtn_on_tiny_model(reference, int4_g32):
    h_r = tiny_handle(**SPREAD)
    run_stage(h_r, rtn.RTNConfig(bits=4, group_size=32))
    kl_gptq = kl_per_token(reference["logits"], _logits(int4_g32[0]))
    kl_rtn = kl_per_token(reference["logits"], _logits(h_r))
    assert kl_gptq < kl_rtn, (kl_gptq, kl_rtn)


def test_save_load_round_trip(int4_g32, tmp_path):
    h, info = int4_g32
    h.stages.append(info)
    before = _logits(h)
    out = save_compressed(h, tmp_path / "gptq-out")
    loaded = load_compressed(out)
    assert all(isinstance(loaded.model.get_submodule(n), Int4Linear) for n in DECODER)
    torch.testing.assert_close(_logits(loaded), before)


def test_recipe_shape_with_int8_head(reference):
    h = tiny_handle(**SPREAD)
    run_stage(h, GPTQConfig(bits=4, group_size=64, symmetric=False), tiny_calibration())
    run_stage(h, rtn.RTNConfig(bits=8, targets=["lm_head"], ignore=[]))
    m = h.model
    assert isinstance(m.lm_head, Int8Linear) and isinstance(m.model.embed_tokens, Int8Embedding)
    assert weight_bytes(m) / reference["bytes"] < 0.2
    assert kl_per_token(reference["logits"], _logits(h)) < 0.1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": 3, "group_size": 32},
        {"bits": 2, "group_size": 64, "symmetric": False},
        {"bits": 4, "group_size": None, "act_order": True},
        {"bits": 3, "group_size": None, "symmetric": False},
        {"bits": 4, "group_size": 32, "act_order": True},
        {"bits": 4, "group_size": 32, "true_sequential": False},
        {"bits": 4, "group_size": 32, "calibration_dtype": "float32", "compute_dtype": "float32"},
    ],
)
def test_variants_run_on_int4_storage(reference, kwargs):
    h = tiny_handle(**SPREAD)
    info = run_stage(h, GPTQConfig(**kwargs), tiny_calibration(8, 32))
    assert all(isinstance(h.model.get_submodule(n), Int4Linear) for n in DECODER)
    kl = kl_per_token(reference["logits"], _logits(h))
    assert kl < {4: 0.1, 3: 0.3, 2: 0.6}[kwargs["bits"]], kl  # measured 0.03 / 0.11-0.17 / 0.35
    notes = " ".join(info.notes)
    if kwargs["bits"] < 4:
        assert f"{kwargs['bits']}-bit codes stored in 4-bit containers" in notes
    if kwargs.get("group_size") is None:
        assert "per-channel scales stored as int4 groups" in notes
        assert {h.model.get_submodule(n).group_size for n in DECODER} == {64, 128}
    assert info.details["static_groups"] == (
        kwargs.get("act_order", False) and bool(kwargs["group_size"])
    )


def test_int8_per_channel(reference):
    h = tiny_handle(**SPREAD)
    info = run_stage(h, GPTQConfig(bits=8, group_size=None), tiny_calibration(8, 32))
    assert all(isinstance(h.model.get_submodule(n), Int8Linear) for n in DECODER)
    assert info.kernel == "aten._weight_int8pack_mm"
    assert kl_per_token(reference["logits"], _logits(h)) < 5e-3


def test_true_sequential_groups_and_debug_timing(caplog):
    with caplog.at_level(logging.DEBUG, logger="compress.calibration.layerwise"):
        run_stage(tiny_handle(), GPTQConfig(bits=4, group_size=32), tiny_calibration(4, 32))
    lines = [r.getMessage() for r in caplog.records if "groups" in r.getMessage()]
    assert len(lines) == 2 and "4 groups [3, 1, 2, 1]" in lines[0]  # qkv, o, gate/up, down


def test_targets_subset_only_changes_those():
    h = tiny_handle()
    info = run_stage(
        h, GPTQConfig(targets=["re:.*mlp\\..*"], group_size=32), tiny_calibration(4, 32)
    )
    assert info.details["layers"] == 6
    assert isinstance(h.model.model.layers[0].mlp.down_proj, Int4Linear)
    assert isinstance(h.model.model.layers[0].self_attn.q_proj, nn.Linear)


def test_no_calibration_raises():
    with pytest.raises(BadInput, match="gptq needs calibration data"):
        run_stage(tiny_handle(), GPTQConfig(group_size=32), None)


def test_group_size_not_dividing_raises_and_changes_nothing():
    h = tiny_handle(hidden_size=48, intermediate_size=96, num_attention_heads=4)
    before = {k: v.clone() for k, v in h.model.state_dict().items()}
    with pytest.raises(BadInput) as ei:
        run_stage(h, GPTQConfig(bits=4, group_size=32), tiny_calibration(4, 32))
    msg = str(ei.value)
    assert "model.layers.0.self_attn.q_proj (in_features 48)" in msg and "12 layer(s)" in msg
    after = h.model.state_dict()
    assert all(
        torch.equal(after[k], before[k]) and after[k].dtype == before[k].dtype for k in before
    )
    assert h.dtype == "float32"
    # per channel: stored in int4 groups; 48 has no such divisor either
    with pytest.raises(BadInput, match="per-channel int4"):
        run_stage(h, GPTQConfig(bits=4, group_size=None), tiny_calibration(4, 32))


def test_lm_head_target_refused():
    with pytest.raises(BadInput, match="outside.*lm_head"):
        run_stage(tiny_handle(), GPTQConfig(group_size=32, ignore=[]), tiny_calibration(4, 32))


def test_targets_without_linear_raise():
    with pytest.raises(BadInput, match="no nn.Linear"):
        run_stage(tiny_handle(), GPTQConfig(targets=["LlamaRMSNorm"]), tiny_calibration(4, 32))


def test_nan_weight_raises_naming_the_layer():
    h = tiny_handle()
    with torch.no_grad():
        h.model.model.layers[1].mlp.down_proj.weight[3, 5] = float("nan")
    with pytest.raises(ReleaseFailed, match=r"model\.layers\.1\.mlp\.down_proj"):
        run_stage(
            h, GPTQConfig(group_size=32, calibration_dtype="float32"), tiny_calibration(4, 32)
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": 8},  # default group_size 128
        {"bits": 8, "group_size": None, "symmetric": False},
        {"bits": 4, "group_size": 48},
        {"bits": 3, "group_size": 16},
        {"bits": 5},
        {"damp": 0},
        {"unknown": 1},
    ],
)
def test_config_validator_refuses(kwargs):
    with pytest.raises(ValidationError):
        GPTQConfig(**kwargs)


def test_config_int8_message_names_fields():
    with pytest.raises(ValidationError, match="group_size: null and symmetric: true"):
        GPTQConfig(bits=8, group_size=64)


@pytest.mark.integration
def test_smollm2_gptq_beats_rtn(shared_data):
    """The recipe's configuration (asymmetric, act_order with static groups) against RTN int4
    g64, symmetric and asymmetric, with little calibration (8 x 256) on 2 windows of 512.
    Measured 2026-11-22: base 28.23, rtn sym 37.92, rtn asym 36.19, this gptq 31.42. (Without
    act_order, symmetric GPTQ at 8 x 256 scored 40.20, worse than RTN: act_order matters on
    SmolLM2, and 2048 calibration tokens are too few for the 1536-wide down_proj Hessians.)"""
    from compress import models
    from compress.calibration.calibrate import load_calibration
    from compress.data import token_windows, wikitext2_test
    from compress.evaluate.perplexity import evaluate_perplexity
    from compress.recipe import Calibration

    base = models.load("smollm2-135m")  # ~15 s; deep-copied per variant
    windows, _, _ = token_windows(base.tokenizer, wikitext2_test(shared_data).text, 512, 2)
    calib = load_calibration(base.tokenizer, Calibration(samples=8, seq_len=256), shared_data)
    ppl = {}
    for name, apply, cfg in (
        ("rtn_sym", run_stage, rtn.RTNConfig(bits=4, group_size=64)),
        ("rtn_asym", run_stage, rtn.RTNConfig(bits=4, group_size=64, symmetric=False)),
        ("gptq", run_stage, GPTQConfig(bits=4, group_size=64, symmetric=False, act_order=True)),
    ):
        h = copy.deepcopy(base)
        apply(h, cfg, calib)
        res = evaluate_perplexity(base.model, h.model, windows, progress=False)
        ppl[name] = res["compressed"][0]["value"]
        ppl["base"] = res["baseline"][0]["value"]
    assert ppl["base"] < ppl["gptq"] < min(ppl["rtn_sym"], ppl["rtn_asym"]), ppl

"""compress.methods.structured on the tiny Llama: depth and width pruning give a smaller dense
model with a plain config that transformers reloads; GQA groups removed whole; bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from compress.errors import BadInput
from compress.methods import StageConfig, run_stage
from compress.methods.gptq import GPTQConfig
from compress.methods.structured import StructuredConfig
from compress.testing import tiny_calibration, tiny_handle

IDS = torch.randint(4, 100, (2, 40), generator=torch.Generator().manual_seed(0))


def _handle(**over):
    return tiny_handle(
        num_hidden_layers=4, hidden_size=48, num_attention_heads=6, num_key_value_heads=3, **over
    )


def _bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_depth_drops_the_lowest_scoring_layers_and_renumbers():
    h = _handle()
    with torch.no_grad():  # layer 2 barely changes its input: it must be the one dropped
        h.model.model.layers[2].mlp.down_proj.weight.mul_(1e-4)
        h.model.model.layers[2].self_attn.o_proj.weight.mul_(1e-4)
    before = _bytes(h.model)
    rec = run_stage(h, StructuredConfig(layers=0.25), tiny_calibration())
    scores = rec.details["layer_scores"]
    assert len(scores) == 4 and min(scores[1:3]) == scores[2]
    assert rec.details["dropped_layers"] == [2] and rec.details["kept_layers"] == [0, 1, 3]
    assert h.model.config.num_hidden_layers == 3 and len(h.model.model.layers) == 3
    idx = [layer.self_attn.layer_idx for layer in h.model.model.layers]
    assert idx == [0, 1, 2]
    assert _bytes(h.model) < before
    with torch.no_grad():
        out = h.model(IDS, use_cache=True)
        assert torch.isfinite(out.logits).all() and out.logits.shape == (2, 40, 128)
        h.model.generate(IDS[:1, :8], max_new_tokens=4, do_sample=False)  # the KV cache works


def test_width_removes_mlp_channels_and_whole_kv_groups():
    h = _handle()
    rec = run_stage(h, StructuredConfig(mlp=0.25, heads=1 / 3, mlp_multiple=8), tiny_calibration())
    cfg = h.model.config
    assert cfg.intermediate_size == 96 and cfg.num_key_value_heads == 2
    assert cfg.num_attention_heads == 4 and cfg.head_dim == 8
    layer = h.model.model.layers[0]
    d = cfg.head_dim
    assert layer.mlp.gate_proj.weight.shape == (96, 48)
    assert layer.mlp.down_proj.weight.shape == (48, 96)
    assert layer.self_attn.q_proj.weight.shape == (4 * d, 48)
    assert layer.self_attn.k_proj.weight.shape == (2 * d, 48)
    assert layer.self_attn.o_proj.weight.shape == (48, 4 * d)
    assert all(len(k) == 2 for k in rec.details["kept_kv_groups"])
    with torch.no_grad():
        assert h.model(IDS).logits.shape == (2, 40, 128)


def test_pruning_a_dead_kv_group_leaves_the_outputs_unchanged():
    h = _handle()
    d = h.model.config.hidden_size // 6
    with torch.no_grad():  # group 1 (query heads 2 and 3) writes nothing: o_proj columns 0
        for layer in h.model.model.layers:
            layer.self_attn.o_proj.weight[:, 2 * d : 4 * d] = 0
        ref = h.model(IDS).logits
    rec = run_stage(h, StructuredConfig(heads=1 / 3), tiny_calibration())
    assert all(k == [0, 2] for k in rec.details["kept_kv_groups"])
    with torch.no_grad():
        torch.testing.assert_close(h.model(IDS).logits, ref, rtol=1e-4, atol=1e-5)


def test_saved_model_reloads_in_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    h = _handle()
    run_stage(h, StructuredConfig(layers=[1], mlp=0.5, mlp_multiple=8), tiny_calibration())
    with torch.no_grad():
        ref = h.model(IDS).logits
    h.model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.num_hidden_layers == 3 and again.config.intermediate_size == 64
    with torch.no_grad():
        torch.testing.assert_close(again(IDS).logits, ref)


def test_composes_with_gptq_after_it():
    h = tiny_handle(num_hidden_layers=4)  # widths the int4 kernel's groups of 32 divide
    calib = tiny_calibration()
    run_stage(h, StructuredConfig(layers=0.25, mlp=0.25, mlp_multiple=32), calib)
    run_stage(h, GPTQConfig(bits=4, group_size=32), calib)
    with torch.no_grad():
        assert torch.isfinite(h.model(IDS).logits).all()


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"layers": [0, 1, 2, 3]}, "dropping all 4 layers"),
        ({"layers": [7]}, "layers [7] do not exist"),
        ({"heads": 0.25}, "whole group at a time"),
        ({"mlp": 0.01}, "mlp:"),
        ({"layers": 0.9}, "fewer than all"),
        ({"layers": 0.75, "protect": [0, 1, -1]}, "drops 3 of 4"),
    ],
)
def test_bad_shapes_are_refused_before_anything_changes(cfg, message):
    h = _handle()
    ref = copy.deepcopy(h.model.state_dict())
    with pytest.raises(BadInput, match="structured: ") as e:
        run_stage(h, StructuredConfig(**cfg), tiny_calibration())
    assert message in str(e.value)
    assert all(torch.equal(ref[k], v) for k, v in h.model.state_dict().items())


@pytest.mark.parametrize(
    "cfg",
    [{}, {"layers": 1.5}, {"layers": []}, {"layers": [1, 1]}, {"mlp": 1.0}, {"bogus": 1}],
)
def test_config_errors(cfg):
    with pytest.raises(ValidationError):
        TypeAdapter(StageConfig).validate_python({"method": "structured", **cfg})


def test_needs_calibration():
    h = _handle()
    with pytest.raises(BadInput, match="calibration"):
        run_stage(h, StructuredConfig(layers=0.25))


def test_samples_scores_on_the_first_n_calibration_samples_only():
    calib = tiny_calibration()
    n = calib.input_ids.shape[0]
    assert n >= 2
    first = copy.deepcopy(calib)
    first.input_ids = calib.input_ids[:1]
    a, b = _handle(), _handle()
    rec_n = run_stage(a, StructuredConfig(layers=0.25, samples=1), calib)
    rec_1 = run_stage(b, StructuredConfig(layers=0.25), first)
    assert rec_n.details["layer_scores"] == rec_1.details["layer_scores"]
    assert "1 calibration samples" in rec_n.notes[0]
    assert calib.input_ids.shape[0] == n  # the shared calibration set is not cut

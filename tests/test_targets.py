"""compress.targets: select() and cast_float_parts()."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from compress.errors import BadInput
from compress.targets import cast_float_parts, select, set_module
from compress.testing import tiny_llama

LINEARS_PER_LAYER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def _all_linears(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def test_select_by_class_name_in_model_order(model):
    got = select(model, ["Linear"], [])
    assert list(got) == _all_linears(model)
    assert len(got) == 2 * len(LINEARS_PER_LAYER) + 1
    assert all(isinstance(m, nn.Linear) for m in got.values())
    assert "lm_head" in got


def test_select_ignore_exact_name(model):
    got = select(model, ["Linear"], ["lm_head"])
    assert "lm_head" not in got and len(got) == 2 * len(LINEARS_PER_LAYER)


def test_select_by_exact_name(model):
    got = select(model, ["model.layers.1.mlp.down_proj", "lm_head"], [])
    assert list(got) == ["model.layers.1.mlp.down_proj", "lm_head"]
    assert got["lm_head"] is model.lm_head


def test_select_by_regex_is_fullmatch(model):
    got = select(model, ["re:.*mlp\\..*_proj"], [])
    assert sorted(got) == sorted(
        f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")
    )
    # fullmatch, not search: "mlp" alone matches nothing
    with pytest.raises(BadInput):
        select(model, ["re:mlp"], [])


def test_select_regex_ignore(model):
    got = select(model, ["Linear"], ["re:model\\.layers\\.0\\..*", "lm_head"])
    assert sorted(got) == sorted(n for n in _all_linears(model) if n.startswith("model.layers.1."))


def test_select_non_linear_class(model):
    got = select(model, ["LlamaRMSNorm"], [])
    assert len(got) == 2 * 2 + 1  # two per layer + the final norm
    assert all(type(m).__name__ == "LlamaRMSNorm" for m in got.values())


def test_target_matching_nothing_suggests_near_miss(model):
    with pytest.raises(BadInput, match="did you mean 'lm_head'") as ei:
        select(model, ["lm_hed"], [], stage="rtn")
    assert "rtn.targets" in str(ei.value) and "'lm_hed'" in str(ei.value)
    with pytest.raises(BadInput, match="did you mean 'Linear'"):
        select(model, ["Lienar"], [])


def test_target_matching_nothing_without_near_miss(model):
    with pytest.raises(BadInput) as ei:
        select(model, ["Linear", "zzzzzzzzzz"], [])
    assert "zzzzzzzzzz" in str(ei.value) and "did you mean" not in str(ei.value)


@pytest.mark.parametrize("field", ["targets", "ignore"])
def test_invalid_regex_raises_bad_input(model, field):
    bad = "re:model.layers.(0"
    args = ([bad], []) if field == "targets" else (["Linear"], [bad])
    with pytest.raises(BadInput, match="not a valid regex") as ei:
        select(model, *args, stage="rtn")
    assert f"rtn.{field}" in str(ei.value)


def test_ignore_matching_nothing_only_logs(model, caplog):
    with caplog.at_level(logging.INFO, logger="compress.targets"):
        got = select(model, ["Linear"], ["not_a_module"])
    assert list(got) == _all_linears(model)
    assert "not_a_module" in caplog.text


def test_set_module_replaces_nested_and_top_level():
    m = tiny_llama()
    new = nn.Identity()
    set_module(m, "model.layers.0.mlp.up_proj", new)
    assert m.model.layers[0].mlp.up_proj is new
    head = nn.Linear(64, 128, bias=False)
    set_module(m, "lm_head", head)
    assert m.lm_head is head


def test_cast_float_parts_keeps_inv_freq_float32():
    m = tiny_llama()
    m.model.layers[0].register_buffer("counts", torch.arange(4))  # integer persistent buffer
    cast_float_parts(m, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    inv = {n: b for n, b in m.named_buffers() if n.endswith("inv_freq")}
    assert inv and all(b.dtype == torch.float32 for b in inv.values())
    assert m.model.layers[0].counts.dtype == torch.int64
    # tied weights stay tied (one Parameter, cast once)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    with torch.no_grad():
        out = m(torch.tensor([[1, 2, 3]])).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()

"""The widths a structured stage leaves are checked against every later stage's group size
before any stage runs: exact (from the config), naming both fields."""

from __future__ import annotations

import pytest

from compress.errors import BadInput
from compress.methods.compose import check_widths
from compress.methods.distill import DistillConfig
from compress.methods.gptq import GPTQConfig
from compress.methods.rtn import RTNConfig
from compress.methods.structured import StructuredConfig
from compress.testing import tiny_llama

DOWN = "re:.*down_proj"


@pytest.fixture(scope="module")
def model():  # hidden 64, intermediate 128, 4 heads of 16 in 2 KV groups
    return tiny_llama(0, num_hidden_layers=3)


def test_mlp_width_left_that_the_group_does_not_divide(model):
    stages = [StructuredConfig(mlp=0.25), DistillConfig(steps=1), GPTQConfig(group_size=64)]
    with pytest.raises(BadInput, match=r"stages.2.group_size 64 does not divide the 96") as e:
        check_widths(model, stages, "stages")
    assert "mlp.down_proj" in str(e.value) and "after stages.0 (structured)" in str(e.value)
    assert "stages.0.mlp_multiple" in str(e.value.fix)


def test_heads_left_that_the_group_does_not_divide(model):
    stages = [StructuredConfig(heads=0.5), RTNConfig(bits=4, group_size=64)]
    with pytest.raises(BadInput, match=r"variants.1.stages.1.group_size 64 .* 32 .*o_proj") as e:
        check_widths(model, stages, "variants.1.stages")
    assert "variants.1.stages.0.heads" in str(e.value.fix)


@pytest.mark.parametrize(
    "stages",
    [
        [StructuredConfig(mlp=0.25, mlp_multiple=64), GPTQConfig(group_size=64)],  # 128 -> 64
        [StructuredConfig(mlp=0.25), GPTQConfig(group_size=32)],  # 96 = 3 x 32
        [StructuredConfig(mlp=0.25), GPTQConfig(group_size=64, ignore=["lm_head", DOWN])],
        [GPTQConfig(group_size=64), StructuredConfig(mlp=0.25)],  # quantized first: not after
        [StructuredConfig(layers=[1]), GPTQConfig(group_size=64)],  # depth leaves widths alone
        [StructuredConfig(mlp=0.25), RTNConfig(bits=8, group_size=None)],  # per channel
    ],
    ids=["multiple", "divides", "ignored", "before", "depth", "per-channel"],
)
def test_what_composes_passes(model, stages):
    check_widths(model, stages, "stages")


def test_an_impossible_plan_is_left_to_the_stage_itself(model):
    """The structured stage names itself when it refuses its plan (as before this check)."""
    check_widths(model, [StructuredConfig(layers=[0, 1, 2]), GPTQConfig(group_size=64)], "stages")

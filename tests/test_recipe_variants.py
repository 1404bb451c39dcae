"""compress.recipe: `variants:` (several ways to compress, one baseline) and `stages:` as the
one-variant shorthand."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.errors import BadInput
from compress.recipe import load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[1]
INT4 = {"method": "rtn", "bits": 4}
CAST = {"method": "cast", "dtype": "bfloat16"}


def _recipe(**over) -> dict:
    r = {"name": "t", "model": "smollm2-135m"}
    r.update(over)
    return r


def test_stages_is_one_variant_named_compressed():
    r = parse_recipe(_recipe(stages=[INT4]))
    (v,) = r.variant_list
    assert v.name == "compressed" and v.stages[0].bits == 4 and not v.control
    assert r.stage_paths()[0][0] == "stages.0"


def test_variants_keep_their_order_names_and_paths():
    r = parse_recipe(
        _recipe(
            variants=[
                {"name": "int4", "stages": [INT4]},
                {"name": "bf16", "stages": [CAST], "control": True},
            ]
        )
    )
    assert [v.name for v in r.variant_list] == ["int4", "bf16"]
    assert [p for p, _ in r.stage_paths()] == ["variants.0.stages.0", "variants.1.stages.0"]


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({}, "exactly one of 'stages:'"),
        ({"stages": [INT4], "variants": [{"name": "a", "stages": [INT4]}]}, "got both"),
        ({"variants": []}, "variants: List should have at least 1 item"),
        ({"variants": [{"name": "a", "stages": []}]}, "variants.0.stages: List should have"),
        (
            {"variants": [{"name": "a", "stages": [INT4]}, {"name": "a", "stages": [CAST]}]},
            "repeated: a",
        ),
        ({"variants": [{"name": "baseline", "stages": [INT4]}]}, "names the uncompressed"),
        ({"variants": [{"name": "a/b", "stages": [INT4]}]}, "variants.0.name: expected letters"),
        ({"variants": [{"name": "a", "stages": [INT4], "stagez": 1}]}, "did you mean 'stages'"),
        (
            {"variants": [{"name": "a", "stages": [{"method": "rtn", "bitz": 4}]}]},
            "variants.0.stages.0.bitz: unknown field (did you mean 'bits'?)",
        ),
    ],
)
def test_bad_variants_are_refused_naming_the_field(over, expected):
    with pytest.raises(BadInput) as e:
        parse_recipe(_recipe(**over))
    assert expected in str(e.value)


def test_a_variant_that_needs_calibration_names_its_path():
    gptq = {"method": "gptq", "bits": 4}
    with pytest.raises(BadInput, match=r"variants\.1\.stages\.0 \(gptq\) need calibration"):
        parse_recipe(
            _recipe(variants=[{"name": "a", "stages": [INT4]}, {"name": "g", "stages": [gptq]}])
        )


def test_gates_apply_to_every_variant_but_controls_and_variant_gates_add():
    r = parse_recipe(
        _recipe(
            variants=[
                {
                    "name": "int4",
                    "stages": [INT4],
                    "gates": [{"metric": "kld.mean", "max_value": 0.1}],
                },
                {"name": "bf16", "stages": [CAST], "control": True},
            ],
            gates=[{"metric": "weights.bytes", "max_ratio": 0.5}],
        )
    )
    int4, bf16 = r.variant_list
    assert [g.metric for g in r.gates_for(int4)] == ["weights.bytes", "kld.mean"]
    assert r.gates_for(bf16) == []


def test_a_variant_gate_on_a_metric_the_recipe_turns_off_is_refused():
    v = {
        "name": "a",
        "stages": [INT4],
        "gates": [{"metric": "decode.tokens_per_s", "min_ratio": 1}],
    }
    with pytest.raises(BadInput, match=r"variants\.0\.gates\.0: decode.tokens_per_s is produced"):
        parse_recipe(_recipe(variants=[v], profile={"enabled": False}))


def test_shipped_compare_recipe_has_three_variants_and_a_cast_control():
    r = load_recipe(REPO / "recipes" / "compare-int8-int4-gptq.yaml")
    names = [v.name for v in r.variant_list]
    assert len(names) == 4 and len(set(names)) == 4
    controls = [v for v in r.variant_list if v.control]
    assert len(controls) == 1 and [s.method for s in controls[0].stages] == ["cast"]
    methods = {s.method for v in r.variant_list if not v.control for s in v.stages}
    assert {"rtn", "gptq"} <= methods

"""compress.sweep.space: a search space over a base recipe's stage fields becomes variants;
bad keys and empty spaces are errors naming the key (exit 2)."""

from __future__ import annotations

import pytest

from compress.errors import BadInput
from compress.recipe import parse_recipe
from compress.sweep.space import SweepSpec, expand

BASE = parse_recipe(
    {
        "name": "base",
        "model": "some/model",
        "calibration": {"samples": 8},
        "stages": [
            {"method": "gptq", "bits": 4, "group_size": 64, "act_order": True},
            {"method": "rtn", "bits": 8, "targets": ["lm_head"], "ignore": []},
        ],
    }
)


def _spec(space, **kw):
    return SweepSpec(name="s", recipe="base.yaml", space=space, **kw)


def test_grid_is_every_combination_with_stable_names_and_keys():
    points = expand(_spec({"stages.0.bits": [3, 4], "stages.0.group_size": [32, 128]}), BASE)
    assert [p.name for p in points] == [
        "bits_3-group_size_32",
        "bits_3-group_size_128",
        "bits_4-group_size_32",
        "bits_4-group_size_128",
    ]
    assert all(p.invalid is None for p in points)
    assert points[0].stages[0]["act_order"] is True  # the base's own settings carry over
    assert points[0].stages[1]["targets"] == ["lm_head"]
    assert len({p.key for p in points}) == 4
    again = expand(_spec({"stages.0.bits": [3, 4], "stages.0.group_size": [32, 128]}), BASE)
    assert [p.key for p in again] == [p.key for p in points]  # same point, same key


def test_points_a_method_refuses_are_kept_with_the_reason():
    points = expand(_spec({"stages.0.bits": [4, 8]}), BASE)  # int8 takes no groups
    bad = {p.name: p.invalid for p in points}
    assert bad["bits_4"] is None and "group" in bad["bits_8"]


def test_varying_the_method_allows_either_methods_fields():
    points = expand(_spec({"stages.0.method": ["rtn", "gptq"]}), BASE)
    rtn = next(p for p in points if p.values["stages.0.method"] == "rtn")
    assert "act_order" in (rtn.invalid or "")  # rtn has no act_order: said, not run
    gptq = next(p for p in points if p.values["stages.0.method"] == "gptq")
    assert gptq.invalid is None


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"stages.0.bitz": [4]}, "no field 'bitz' (did you mean 'bits'?)"),
        ({"stages.5.bits": [4]}, "has 2 stage(s)"),
        ({"bits": [4]}, "expected stages.<index>.<field>"),
        ({"stages.0.bits": []}, "has no values"),
        ({"stages.0.method": ["gptqq"]}, "unknown method 'gptqq' (did you mean 'gptq'?)"),
        ({"stages.0.bits": [8], "stages.0.group_size": [32]}, "none of its 1 point(s)"),
    ],
)
def test_bad_spaces_name_the_key(space, message):
    with pytest.raises(BadInput, match=None) as e:
        expand(_spec(space), BASE)
    assert message in str(e.value)


def test_an_empty_space_is_refused_by_the_schema():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        _spec({})

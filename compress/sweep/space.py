"""A sweep: a base recipe plus a search space over its stage fields, expanded into variants.

    name: smollm2-int4-grid
    recipe: ../recipes/gptq-int4.yaml      # model, calibration, eval, profile, gates
    space:                                 # grid: every combination is one variant
      stages.0.method: [rtn, gptq]
      stages.0.group_size: [32, 64, 128]

Keys are `stages.<i>.<field>` paths into the base recipe's variant; an unknown field or stage
is bad input naming the key (with "did you mean"). Every point is validated as a recipe
variant would be: a point the method refuses (e.g. 8 bits with groups) is kept in the list
with the reason and not run; a sweep with no valid point is bad input. Each point has a key,
the hash of everything that decides its result (model, stages, calibration, eval, profile),
so a re-run can tell which trials are done.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from compress._config import Strict
from compress.errors import BadInput, did_you_mean

_KEY = re.compile(r"^stages\.(\d+)\.([A-Za-z_][A-Za-z0-9_]*)$")


class SearchConfig(Strict):
    """How `objective: cheapest` picks the candidates it measures fully."""

    margin: float = Field(
        0.01, ge=0, description="keep points within this perplexity-loss fraction of the front"
    )
    max_candidates: int = Field(4, ge=1, description="at most this many full trials")


class SweepSpec(Strict):
    name: str = Field(description="sweep name; runs go to <out>/<name>/")
    description: str = ""
    recipe: str = Field(description="the base recipe (path relative to the sweep file)")
    variant: str | None = Field(
        None, description="which variant of the base recipe to vary (default: its only one)"
    )
    space: dict[str, list[Any]] = Field(
        min_length=1, description="stages.<i>.<field>: [values]; the grid of all combinations"
    )
    objective: Literal["all", "cheapest"] = Field(
        "all",
        description="all: every valid point is run; cheapest: screen every point on the quick "
        "eval without timing, run only the candidates fully, choose the cheapest passing one",
    )
    search: SearchConfig = Field(default_factory=lambda: SearchConfig())
    calibration: dict[str, Any] | None = Field(
        None, description="replaces the base recipe's calibration (e.g. when a point uses gptq)"
    )


@dataclass
class Point:
    name: str
    values: dict[str, Any]  # key -> value
    stages: list[dict[str, Any]]
    key: str  # hash of what decides the result
    invalid: str | None = None  # why this point cannot run


def base_stages(spec: SweepSpec, base: Any) -> list[dict[str, Any]]:
    """The varied variant's stages as the recipe wrote them (only the fields it set)."""
    if base.variants is None:
        stages = base.stages
    else:
        names = [v.name for v in base.variants]
        wanted = spec.variant or (names[0] if len(names) == 1 else None)
        if wanted not in names:
            raise BadInput(
                f"sweep variant: the base recipe has variants {names}; name one of them"
                + (did_you_mean(spec.variant, names) if spec.variant else "")
                + "."
            )
        stages = next(v for v in base.variants if v.name == wanted).stages
    return [s.model_dump(mode="json", exclude_unset=True) | {"method": s.method} for s in stages]


def check_keys(spec: SweepSpec, stages: list[dict[str, Any]]) -> None:
    from compress.methods import METHODS

    for key, values in spec.space.items():
        m = _KEY.match(key)
        if not m:
            raise BadInput(f"sweep space key {key!r}: expected stages.<index>.<field>.")
        i, field = int(m.group(1)), m.group(2)
        if i >= len(stages):
            raise BadInput(
                f"sweep space key {key!r}: the base variant has {len(stages)} stage(s) "
                f"(indices 0..{len(stages) - 1})."
            )
        methods = spec.space.get(f"stages.{i}.method", [stages[i]["method"]])
        for name in methods:
            if name not in METHODS:
                raise BadInput(
                    f"sweep space key stages.{i}.method: unknown method {name!r}"
                    f"{did_you_mean(name, METHODS)}."
                )
        fields = set().union(*(METHODS[n].config.model_fields for n in methods))
        if field not in fields:
            raise BadInput(
                f"sweep space key {key!r}: stage {i} ({', '.join(map(str, methods))}) has no "
                f"field {field!r}{did_you_mean(field, fields)}."
            )
        if not values:
            raise BadInput(f"sweep space key {key!r} has no values; list at least one.")


def point_key(base: Any, stages: list[dict[str, Any]]) -> str:
    decided = {
        "model": base.model,
        "stages": stages,
        "calibration": base.calibration.model_dump(mode="json") if base.calibration else None,
        "eval": base.eval.model_dump(mode="json"),
        "profile": base.profile.model_dump(mode="json"),
    }
    blob = json.dumps(decided, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _name(values: dict[str, Any]) -> str:
    parts = [f"{k.rsplit('.', 1)[1]}_{v}" for k, v in values.items()]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts))


def expand(spec: SweepSpec, base: Any) -> list[Point]:
    """Every combination of the space's values, validated; invalid ones carry the reason."""
    from pydantic import TypeAdapter, ValidationError

    from compress.methods import StageConfig

    stages0 = base_stages(spec, base)
    check_keys(spec, stages0)
    adapter = TypeAdapter(StageConfig)
    keys = list(spec.space)
    points = []
    for combo in itertools.product(*(spec.space[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        stages = [dict(s) for s in stages0]
        for key, value in values.items():
            i, field = _KEY.match(key).groups()
            stages[int(i)][field] = value
        invalid = None
        try:
            stages = [adapter.validate_python(s).model_dump(mode="json") for s in stages]
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"][1:])
            invalid = f"{where or 'stage'}: {first['msg']}"
        points.append(Point(_name(values), values, stages, point_key(base, stages), invalid))
    if not any(p.invalid is None for p in points):
        raise BadInput(
            f"sweep {spec.name!r}: none of its {len(points)} point(s) is a valid variant "
            f"(e.g. {points[0].name}: {points[0].invalid})."
        )
    return points

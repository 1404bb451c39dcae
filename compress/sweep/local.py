"""The local executor: every valid point of a sweep as one variant of ONE recipe, run by the
ordinary pipeline in this process, so the baseline is loaded, scored and timed once and every
trial is paired with it on the same windows and in the same interleaved timing rounds. This
is also the sequential reference a distributed executor is measured against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from compress.errors import BadInput
from compress.recipe import load_recipe, parse_recipe
from compress.sweep.space import Point, SweepSpec, expand


def load_sweep(path: str | Path) -> tuple[SweepSpec, Any, list[Point]]:
    """Read the sweep file and its base recipe; expand the space (bad input: exit 2)."""
    from pydantic import ValidationError

    from compress.recipe_errors import format_validation_error

    p = Path(path)
    if not p.is_file():
        raise BadInput(
            f"Sweep file '{p}' does not exist.", fix="e.g. sweeps/smollm2-int4-grid.yaml"
        )
    data = yaml.safe_load(p.read_text(encoding="utf-8"))
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        raise BadInput(format_validation_error(e, data, str(p), SweepSpec)) from None
    base = load_recipe((p.parent / spec.recipe).resolve())
    points = expand(spec, base)
    sweep_recipe(spec, base, points)  # the whole recipe is valid before anything runs
    return spec, base, points


def sweep_recipe(spec: SweepSpec, base: Any, points: list[Point]) -> Any:
    """One recipe whose variants are the sweep's valid points (the base's gates apply)."""
    data = base.model_dump(mode="json")
    data.pop("stages", None)
    if spec.calibration is not None:
        data["calibration"] = spec.calibration
    data.update(
        name=spec.name,
        description=spec.description or f"sweep over {', '.join(spec.space)} of {base.name}",
        variants=[
            {
                "name": p.name,
                "description": ", ".join(f"{k}={v}" for k, v in p.values.items())
                + f" (trial {p.key})",
                "stages": p.stages,
            }
            for p in points
            if p.invalid is None
        ],
    )
    return parse_recipe(data, source=f"sweep {spec.name}")

"""Reading a sweep and turning its points into recipes: either one trial per point (`plan`,
for the Ray and local executors), or every point as a variant of ONE recipe (`sweep_recipe`,
the `one-run` executor: the baseline loaded, scored and timed once, every point paired with
it on the same windows and in the same interleaved timing rounds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from compress.errors import BadInput
from compress.recipe import load_recipe, parse_recipe
from compress.sweep.space import Point, SweepSpec, expand
from compress.sweep.trial import TrialJob, trial_key


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


def sweep_recipe(spec: SweepSpec, base: Any, points: list[Point], name: str | None = None) -> Any:
    """One recipe whose variants are the given valid points (the base's gates apply)."""
    data = base.model_dump(mode="json")
    data.pop("stages", None)
    if spec.calibration is not None:
        data["calibration"] = spec.calibration
    data.update(
        name=name or spec.name,
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


def plan(
    spec: SweepSpec,
    base: Any,
    points: list[Point],
    sweep_dir: Path,
    *,
    quick: bool,
    data_dir: str | None,
    argv: list[str],
    rung: str = "trials",
) -> list[TrialJob]:
    """One trial per valid point: its own one-variant recipe, folder and key. The screen rung
    of a budgeted search: the quick eval, no timing."""
    jobs = []
    quick = quick or rung == "screen"
    for p in points:
        if p.invalid is not None:
            continue
        recipe = sweep_recipe(spec, base, [p], name=p.name)
        if rung == "screen":
            recipe = _untimed(recipe)
        jobs.append(
            TrialJob(
                name=p.name,
                key=trial_key(p.key, quick, rung),
                values=p.values,
                recipe=recipe.model_dump(mode="json"),
                sweep_dir=str(sweep_dir.resolve()),
                quick=quick,
                data_dir=data_dir,
                argv=argv,
                rung=rung,
            )
        )
    return jobs


def _untimed(recipe: Any) -> Any:
    """The screen's recipe: no timing, hence no gate on a timed metric (the full trials decide
    those; a recipe gating a metric it never measures is refused as bad input)."""
    from compress.metrics import metric_info

    def keep(gates: list) -> list:
        return [g for g in gates if metric_info(g.metric).producer != "profile"]

    data = recipe.model_dump(mode="json")
    data["profile"]["enabled"] = False
    data["gates"] = [g.model_dump(mode="json") for g in keep(recipe.gates)]
    for v, raw in zip(recipe.variants or [], data.get("variants") or [], strict=True):
        raw["gates"] = [g.model_dump(mode="json") for g in keep(v.gates)]
    return parse_recipe(data, source=f"sweep screen of {recipe.name}")

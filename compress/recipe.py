"""Recipes: what to compress, how, how to judge it. Pure pydantic, no torch.

A recipe is data. `load_recipe(path)` reads YAML with `yaml.safe_load`, validates it and
turns every validation problem into one `BadInput` that names the field path, what was
expected and, for near misses, what was probably meant.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from compress._config import Strict
from compress.errors import BadInput
from compress.methods import StageConfig, needs_calibration
from compress.metrics import KNOWN_METRICS as KNOWN_METRICS  # re-exported
from compress.metrics import Metric as Metric
from compress.metrics import direction_problem, metric_info
from compress.recipe_errors import format_validation_error

SCHEMA_VERSION = 1


class Calibration(Strict):
    """Calibration text for methods that need activations (GPTQ, AWQ, SmoothQuant...)."""

    dataset: str = Field(
        "wikitext2-calib", description="named set, local text/jsonl file or hub id"
    )
    samples: int = Field(128, ge=1)
    seq_len: int = Field(512, ge=8)
    seed: int = 0


class PerplexityEval(Strict):
    """Perplexity over non-overlapping windows of the joined test split (see report)."""

    seq_len: int | None = Field(
        None, ge=16, description="window length; default min(2048, model max)"
    )
    max_windows: int | None = Field(None, ge=1, description="score only the first N windows")
    quick_windows: int = Field(4, ge=1, description="max_windows under --quick")


class KLDEval(Strict):
    """KL(baseline || compressed) and top-1 agreement on the perplexity windows."""

    enabled: bool = True


class EvalConfig(Strict):
    wikitext2: PerplexityEval | None = PerplexityEval()
    kld: KLDEval | None = KLDEval()
    tasks: list[str] = Field(
        [], description="eval tasks (evals/*.yaml or include_path); gates may name <task>.<metric>"
    )
    task_limit: int | None = Field(None, ge=1, description="score only the first N items a task")
    quick_task_limit: int = Field(200, ge=1, description="task_limit under --quick")
    batch_size: int = Field(8, ge=1, description="sequences per forward when scoring tasks")
    max_length: int | None = Field(
        None, ge=2, description="task context limit in tokens (default: the model's, as lm-eval)"
    )
    cache: bool = Field(True, description="reuse the baseline's cached task results")
    include_path: list[str] = Field([], description="folders of your own task YAMLs")
    data_dir: str | None = Field(None, description="folder with local copies of the eval data")


class ProfileConfig(Strict):
    """Latency / memory / energy measurement, paired and interleaved: every model is timed in
    `pairs` rounds of fresh processes (baseline, variant, then reversed), one sample per
    process. Defaults fit a 2-core machine."""

    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        [1, 8], min_length=1, description="decode batch sizes; metrics get '@bsN' for N > 1"
    )
    prompt_tokens: int = Field(128, ge=1, description="prompt before decoding (and a prefill)")
    prefill_lengths: list[Annotated[int, Field(ge=1)]] = Field(
        [512], description="other prompt lengths timed as prefill alone; metrics get '@pN'"
    )
    new_tokens: int = Field(32, ge=2)
    warmup: int = Field(1, ge=0, description="untimed repeats in each process")
    repeats: int = Field(3, ge=1, description="timed repeats in each process (its medians)")
    quick_repeats: int = Field(2, ge=1)
    pairs: int = Field(
        5, ge=2, description="rounds of fresh processes (one per model each): the n of a ratio"
    )
    quick_pairs: int = Field(4, ge=2, description="rounds under --quick")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; default all cores")
    power_watts: float | None = Field(
        None,
        gt=0,
        description="stated device power; used only to ESTIMATE energy when none is measured",
    )
    enabled: bool = True
    kernels: Literal["auto", "fixed"] = Field(
        "auto",
        description="auto: time the quantized modules' execution paths on this host and use "
        "the fastest agreeing ones (evaluation too, so the last digits of quality numbers can "
        "differ between runs that chose differently); fixed: each module's default path, no "
        "timing, quality numbers bit-reproducible run to run",
    )


class CostConfig(Strict):
    usd_per_device_hour: float = Field(
        1.0, gt=0, description="price of the device serving the model (default 1.0: relative cost)"
    )
    device_name: str = "this machine"


class Gate(Strict):
    """One release criterion. Exactly one threshold per gate."""

    metric: str
    max_relative_increase: float | None = None
    max_increase: float | None = None
    min_ratio: float | None = Field(None, gt=0)
    max_ratio: float | None = Field(None, gt=0)
    max_value: float | None = None
    min_value: float | None = None

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        metric_info(v)  # raises ValueError naming what was expected
        return v

    @model_validator(mode="after")
    def _one_threshold(self) -> Gate:
        set_ = [k for k in THRESHOLDS if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(
                f"a gate needs exactly one threshold out of {', '.join(THRESHOLDS)}; got "
                f"{', '.join(set_) or 'none'}"
            )
        problem = direction_problem(self.kind, self.metric, metric_info(self.metric))
        if problem:
            raise ValueError(problem)
        return self

    @property
    def kind(self) -> str:
        return next(k for k in THRESHOLDS if getattr(self, k) is not None)

    @property
    def threshold(self) -> float:
        return float(getattr(self, self.kind))


THRESHOLDS = (
    "max_relative_increase",
    "max_increase",
    "min_ratio",
    "max_ratio",
    "max_value",
    "min_value",
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def _slug(v: str) -> str:
    """A name that is also a folder name (run folders, models/<variant>/)."""
    if not _NAME.match(v):
        raise ValueError("expected letters, digits, '.', '_' or '-' (a folder name), 1-80 chars")
    return v


class Variant(Strict):
    """One way to compress the model. Every variant starts from the same baseline and is
    evaluated on the same windows and timed in the same interleaved rounds as the others."""

    name: str = Field(description="column heading and folder name (models/<name>/)")
    description: str = ""
    stages: list[StageConfig] = Field(min_length=1)
    control: bool = Field(
        False,
        description="a reference point (e.g. a plain bfloat16 cast): reported beside the "
        "others but not gated by the recipe's gates",
    )
    gates: list[Gate] = Field([], description="gates for this variant only (added to the recipe's)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if _slug(v) == "baseline":
            raise ValueError("'baseline' names the uncompressed model; pick another name")
        return v


class Recipe(Strict):
    name: str = Field(description="run name; reports go to reports/<name>/<UTC timestamp>/")
    description: str = ""
    model: str = Field(description="packaged alias, hub id, local HF directory or .gguf path")
    trust_remote_code: bool = False
    seed: int = 0
    stages: list[StageConfig] | None = Field(
        None, min_length=1, description="one variant's stages (shorthand for one variant)"
    )
    variants: list[Variant] | None = Field(
        None, min_length=1, description="several variants measured against one baseline"
    )
    calibration: Calibration | None = None
    eval: EvalConfig = EvalConfig()
    profile: ProfileConfig = ProfileConfig()
    cost: CostConfig = CostConfig()
    gates: list[Gate] = Field([], description="applied to every variant that is not a control")
    export: list[Literal["gguf", "compressed-tensors", "onnx"]] = Field(
        [],
        description="deployable files written for every variant after the run, as `compress "
        "export` writes them (to <run>/exports/); a variant a format cannot hold is noted, "
        "not fatal",
    )

    @property
    def variant_list(self) -> list[Variant]:
        """The variants to run: `variants:`, or `stages:` as one variant named 'compressed'."""
        if self.variants is not None:
            return self.variants
        return [Variant(name="compressed", stages=self.stages or [])]

    def gates_for(self, variant: Variant) -> list[Gate]:
        return ([] if variant.control else list(self.gates)) + list(variant.gates)

    def stage_paths(self) -> list[tuple[str, StageConfig]]:
        """Every stage with its field path (stages.1, variants.0.stages.2)."""
        if self.variants is None:
            return [(f"stages.{i}", s) for i, s in enumerate(self.stages or [])]
        return [
            (f"variants.{j}.stages.{i}", s)
            for j, v in enumerate(self.variants)
            for i, s in enumerate(v.stages)
        ]

    @model_validator(mode="before")
    @classmethod
    def _register_tasks(cls, data: Any) -> Any:
        """The named tasks' `<task>.<metric>` names join the metric registry before the gates
        are read (an unknown task is an error naming it)."""
        ev = data.get("eval") if isinstance(data, dict) else None
        if isinstance(ev, dict) and ev.get("tasks"):
            from compress.evaluate.taskspec import get_specs, register_task_metrics

            try:
                specs = get_specs(list(ev["tasks"]), list(ev.get("include_path") or []))
            except BadInput as e:
                raise ValueError(f"eval.tasks: {e}") from None
            for ls in specs:
                register_task_metrics(ls.spec)
        return data

    @model_validator(mode="after")
    def _stages_or_variants(self) -> Recipe:
        if (self.stages is None) == (self.variants is None):
            raise ValueError(
                "a recipe needs exactly one of 'stages:' (one variant) or 'variants:' (a list "
                "of {name, stages}); got " + ("both" if self.stages else "neither")
            )
        names = [v.name for v in self.variant_list]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(dup)}")
        return self

    @model_validator(mode="after")
    def _calibration_present(self) -> Recipe:
        needy = [f"{path} ({s.method})" for path, s in self.stage_paths() if needs_calibration(s)]
        if needy and self.calibration is None:
            raise ValueError(
                f"{', '.join(needy)} need calibration data but the recipe has no calibration "
                "block; add e.g. calibration: {dataset: wikitext2-calib, samples: 128, "
                "seq_len: 512, seed: 0}"
            )
        return self

    @model_validator(mode="after")
    def _gates_producible(self) -> Recipe:
        """A gate on a metric this recipe turns off is refused now, not left 'inconclusive'
        after a long run."""
        off = {
            "eval.wikitext2": self.eval.wikitext2 is None,
            "eval.kld": self.eval.wikitext2 is None
            or not (self.eval.kld and self.eval.kld.enabled),
            "profile": not self.profile.enabled,
        }
        tasks = set(self.eval.tasks)
        how = {
            "eval.wikitext2": "set eval.wikitext2 (e.g. {seq_len: 2048, max_windows: 40})",
            "eval.kld": "set eval.kld: {enabled: true} (it scores the eval.wikitext2 windows)",
            "profile": "set profile.enabled: true",
        }
        gates = [(f"gates.{i}", g) for i, g in enumerate(self.gates)]
        gates += [
            (f"variants.{j}.gates.{i}", g)
            for j, v in enumerate(self.variants or [])
            for i, g in enumerate(v.gates)
        ]
        for path, g in gates:
            producer = metric_info(g.metric).producer
            if producer == "eval.tasks" and g.metric.split(".")[0] not in tasks:
                raise ValueError(
                    f"{path}: {g.metric} is produced by task '{g.metric.split('.')[0]}', which "
                    "this recipe does not run; add it to eval.tasks or drop the gate"
                )
            if off.get(producer):
                raise ValueError(
                    f"{path}: {g.metric} is produced by {producer}, which this recipe turns "
                    f"off, so the gate could never be decided; {how[producer]} or drop the gate"
                )
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _slug(v)


def recipe_schema() -> dict[str, Any]:
    """JSON Schema of a recipe (for editors and `compress schema`)."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"compress recipe (schema v{SCHEMA_VERSION})"
    return schema


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; every problem becomes a `BadInput`."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(
            f"Recipe file '{p}' does not exist{' (it is a folder)' if p.is_dir() else ''}.",
            fix="Pass the path of a YAML recipe, e.g. recipes/int4.yaml.",
        )
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise BadInput(
            f"Recipe '{p}' is not valid YAML{where}: {problem}.",
            fix="Check indentation and that every 'key: value' pair has a space after the colon.",
        ) from None
    except UnicodeDecodeError:
        raise BadInput(f"Recipe '{p}' is not UTF-8 text.", fix="Save it as UTF-8 YAML.") from None
    recipe = parse_recipe(data, source=str(p))
    check_model_field(recipe, source=str(p))
    return recipe


def check_model_field(recipe: Recipe, *, source: str = "recipe") -> None:
    """Refuse a `model:` that is neither a packaged alias, an existing folder or .gguf file,
    nor a hub id `owner/name` (paths are relative to the working directory). No torch."""
    from compress.models import spec_problem

    problem = spec_problem(recipe.model)
    if problem:
        raise BadInput(
            f"Recipe '{source}' has 1 problem:\n  - model: {problem}",
            fix="Name a packaged alias (`compress models` lists them), a local model folder, "
            "a .gguf file or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct.",
        )


def parse_recipe(data: Any, *, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise BadInput(
            f"Recipe '{source}' must be a YAML mapping (name:, model:, stages: ...), "
            f"got {type(data).__name__}.",
            fix="See recipes/int4.yaml for the shape, or run `compress schema`.",
        )
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise BadInput(format_validation_error(e, data, source, Recipe)) from None


def parse_gates(path: str | Path) -> list[Gate]:
    """Read gates from a YAML file holding `gates: [...]` or a bare list."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"Gates file '{p}' does not exist.", fix="Pass a YAML file with gates:.")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise BadInput(f"Gates file '{p}' is not valid YAML: {e}.") from None
    if isinstance(data, dict) and set(data) == {"gates"}:
        data = data["gates"]
    if not isinstance(data, list):
        raise BadInput(f"Gates file '{p}' must hold a list of gates (or `gates: [...]`).")

    class _Gates(Strict):
        gates: list[Gate]

    try:
        return _Gates.model_validate({"gates": data}).gates
    except ValidationError as e:
        raise BadInput(format_validation_error(e, {"gates": data}, str(p), _Gates)) from None

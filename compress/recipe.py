"""Recipes: what to compress, how, how to judge it. Pure pydantic, no torch.

A recipe is data. `load_recipe(path)` reads YAML with `yaml.safe_load`, validates it and
turns every validation problem into one `BadInput` that names the field path, what was
expected and, for near misses, what was probably meant.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from compress._config import Strict
from compress.errors import BadInput, did_you_mean
from compress.methods import StageConfig, method_names, needs_calibration
from compress.metrics import KNOWN_METRICS as KNOWN_METRICS  # re-exported
from compress.metrics import Metric as Metric
from compress.metrics import direction_problem, metric_info

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


class Recipe(Strict):
    name: str = Field(description="run name; reports go to reports/<name>/<UTC timestamp>/")
    description: str = ""
    model: str = Field(description="packaged alias, hub id, local HF directory or .gguf path")
    trust_remote_code: bool = False
    seed: int = 0
    stages: list[StageConfig] = Field(min_length=1)
    calibration: Calibration | None = None
    eval: EvalConfig = EvalConfig()
    profile: ProfileConfig = ProfileConfig()
    cost: CostConfig = CostConfig()
    gates: list[Gate] = []

    @model_validator(mode="after")
    def _calibration_present(self) -> Recipe:
        needy = [
            f"stages.{i} ({s.method})" for i, s in enumerate(self.stages) if needs_calibration(s)
        ]
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
        how = {
            "eval.wikitext2": "set eval.wikitext2 (e.g. {seq_len: 2048, max_windows: 40})",
            "eval.kld": "set eval.kld: {enabled: true} (it scores the eval.wikitext2 windows)",
            "profile": "set profile.enabled: true",
        }
        for i, g in enumerate(self.gates):
            producer = metric_info(g.metric).producer
            if off.get(producer):
                raise ValueError(
                    f"gates.{i}: {g.metric} is produced by {producer}, which this recipe turns "
                    f"off, so the gate could never be decided; {how[producer]} or drop the gate"
                )
        return self

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                "expected letters, digits, '.', '_' or '-' (a folder name), 1-80 chars"
            )
        return v


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
        raise BadInput(format_validation_error(e, data, source)) from None


def _field_names_at(loc: tuple, data: Any) -> list[str]:
    """The allowed keys of the model at `loc` (for 'did you mean')."""
    model: Any = Recipe
    node = data
    for part in loc[:-1]:
        if isinstance(node, list) and isinstance(part, int):
            node = node[part] if part < len(node) else None
            continue
        if isinstance(part, str) and part in method_names():
            continue
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return []
        ann = fields[part].annotation
        node = node.get(part) if isinstance(node, dict) else None
        model = _model_in(ann, node)
    return list(getattr(model, "model_fields", {}))


def _model_in(annotation: Any, node: Any) -> Any:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg, node)
        if found is not None:
            if isinstance(node, dict) and "method" in node:
                from compress.methods import config_class

                cls = config_class(str(node["method"]))
                if cls is not None:
                    return cls
            return found
    return None


def format_validation_error(err: ValidationError, data: Any, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc if not (isinstance(p, str) and p in method_names()))
        kind = e["type"]
        if kind == "extra_forbidden":
            allowed = _field_names_at(loc, data)
            hint = did_you_mean(str(loc[-1]), allowed)
            exp = f"; allowed here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{path}: unknown field{hint}{exp}")
        elif kind == "union_tag_invalid":
            tag = e.get("ctx", {}).get("tag")
            lines.append(
                f"{path}.method: unknown method '{tag}'{did_you_mean(tag, method_names())}; "
                f"expected one of: {', '.join(method_names())}"
            )
        elif kind == "union_tag_not_found":
            lines.append(f"{path}: a stage needs 'method:' (one of {', '.join(method_names())})")
        elif kind == "missing":
            lines.append(f"{path}: required field is missing")
        else:
            got = e.get("input")
            msg = e["msg"].removeprefix("Value error, ")
            if isinstance(got, dict | list):  # a whole block: the message says what is wrong
                lines.append(f"{path or 'recipe'}: {msg}")
                continue
            got_s = json.dumps(got, default=str)
            if len(got_s) > 60:
                got_s = got_s[:57] + "..."
            lines.append(f"{path or 'recipe'}: {msg} (got {got_s})")
    n = len(lines)
    head = f"Recipe '{source}' has {n} problem{'s' if n > 1 else ''}:"
    tail = "Fix the field(s) named above; `compress schema` prints every field and its type."
    return head + "\n  - " + "\n  - ".join(lines) + "\n" + tail


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
        raise BadInput(format_validation_error(e, {"gates": data}, str(p))) from None

"""Eval task specs in lm-evaluation-harness's YAML format (the part we support), one per file.

A spec names its data (`dataset_path: json|csv|tsv|hellaswag_txt` + local
`dataset_kwargs.data_files`; hub ids are refused for now), how a document becomes a prompt
(`doc_to_text`), its choices (`doc_to_choice`) and its gold answer (`doc_to_target`), as field
names or sandboxed Jinja2 templates, exactly as lm-eval reads them. Keys lm-eval has and we do
not run are refused by name; keys neither knows get a "did you mean". Compress extensions are
marked as such (`labels_file`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from compress.errors import BadInput, did_you_mean

#: folder of the specs shipped with compress (top level of the repository)
BUILTIN_DIR = Path(__file__).resolve().parents[2] / "evals"

#: lm-eval keys we read but that change nothing here (documentation, few-shot splits)
IGNORED = frozenset(
    {"tag", "metadata", "should_decontaminate", "doc_to_decontamination_query",
     "training_split", "fewshot_split", "fewshot_delimiter"}
)  # fmt: skip
#: lm-eval keys we do not support yet: refused by name rather than silently misread
UNSUPPORTED = frozenset(
    {"process_results", "filter_list", "generation_kwargs", "repeats", "fewshot_config",
     "doc_to_image", "doc_to_audio", "use_prompt", "include", "group", "class",
     "custom_dataset", "unsafe_code", "gen_prefix", "multiple_input", "multiple_target"}
)  # fmt: skip
PROCESS_DOCS = ("none", "hellaswag_preprocess")


class MetricItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: Literal["acc", "acc_norm", "acc_bytes"]
    aggregation: Literal["mean"] = "mean"
    higher_is_better: bool = True


class DatasetKwargs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data_files: dict[str, str] | str | None = None


class TaskSpec(BaseModel):
    """One task. Field meanings follow lm-evaluation-harness's task YAML."""

    model_config = ConfigDict(extra="forbid")
    task: str
    dataset_path: str = Field(description="json, csv, tsv or hellaswag_txt, with data_files")
    dataset_name: str | None = None
    dataset_kwargs: DatasetKwargs = DatasetKwargs()
    test_split: str | None = None
    validation_split: str | None = None
    output_type: Literal["multiple_choice"] = "multiple_choice"
    doc_to_text: str
    doc_to_target: str | int
    doc_to_choice: str | list[str]
    target_delimiter: str = " "
    description: str = ""
    num_fewshot: int = Field(0, ge=0, le=0, description="zero-shot only (for now)")
    metric_list: list[MetricItem] = [MetricItem(metric="acc"), MetricItem(metric="acc_norm")]
    process_docs: str = Field("none", description=f"a named built-in: {', '.join(PROCESS_DOCS)}")
    labels_file: str | None = Field(
        None, description="compress extension: gold labels one per line, beside data_files"
    )

    @field_validator("process_docs")
    @classmethod
    def _builtin(cls, v: str) -> str:
        if v not in PROCESS_DOCS:
            raise ValueError(
                f"process_docs must name a built-in ({', '.join(PROCESS_DOCS)}); Python "
                "functions (!function ...) are not run"
            )
        return v

    @property
    def split(self) -> str:
        return self.test_split or self.validation_split or "test"


class LoadedSpec(BaseModel):
    """A spec plus where it came from (its file and the file's sha256)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    spec: TaskSpec
    path: Path
    sha256: str


def _problems(err: ValidationError, data: dict, where: str) -> str:
    allowed = list(TaskSpec.model_fields)
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden" and len(e["loc"]) == 1:
            key = str(e["loc"][0])
            lines.append(f"{key}: unknown key{did_you_mean(key, allowed)}")
        elif e["type"] == "missing":
            lines.append(f"{loc}: required key is missing")
        else:
            lines.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}")
    return f"Task spec '{where}' has {len(lines)} problem(s):\n  - " + "\n  - ".join(lines)


def parse_spec(text: str, where: str) -> TaskSpec:
    """A task YAML as a `TaskSpec`; every problem a `BadInput` naming the key."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BadInput(f"Task spec '{where}' is not valid YAML: {e}.") from None
    if not isinstance(data, dict):
        raise BadInput(f"Task spec '{where}' must be a YAML mapping (task:, dataset_path: ...).")
    refused = sorted(set(data) & UNSUPPORTED)
    if refused:
        raise BadInput(
            f"Task spec '{where}' uses lm-eval key(s) compress does not run: {', '.join(refused)}.",
            fix="Remove them (see README, 'Eval tasks', for the supported subset).",
        )
    data = {k: v for k, v in data.items() if k not in IGNORED}
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as e:
        raise BadInput(_problems(e, data, where)) from None


def load_specs(include: list[str | Path] | None = None) -> dict[str, LoadedSpec]:
    """Every spec in evals/ and the `include` folders (later folders override by name)."""
    out: dict[str, LoadedSpec] = {}
    for folder in [BUILTIN_DIR, *(Path(p) for p in include or [])]:
        if not folder.is_dir():
            if folder == BUILTIN_DIR:
                continue
            raise BadInput(f"--include-path '{folder}' is not a folder of task YAMLs.")
        for path in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")):
            text = path.read_text(encoding="utf-8")
            spec = parse_spec(text, str(path))
            sha = hashlib.sha256(text.encode()).hexdigest()
            out[spec.task] = LoadedSpec(spec=spec, path=path, sha256=sha)
    return out


def get_specs(names: list[str], include: list[str | Path] | None = None) -> list[LoadedSpec]:
    """The named specs, in order; an unknown name is a BadInput with a near miss."""
    specs = load_specs(include)
    missing = [n for n in names if n not in specs]
    if missing:
        hint = did_you_mean(missing[0], list(specs))
        raise BadInput(
            f"Unknown task '{missing[0]}'{hint}; known: {', '.join(sorted(specs)) or 'none'}.",
            fix="`compress evals` lists the tasks; --include-path adds a folder of your own.",
        )
    return [specs[n] for n in names]


def register_task_metrics(spec: TaskSpec) -> None:
    """`<task>.<metric>` names into the metric registry, so gates may name them."""
    from compress.metrics import Metric, register_metric

    what = {
        "acc": "accuracy: share of items whose highest log-likelihood choice is the gold one",
        "acc_norm": "accuracy with each choice's log-likelihood divided by its length in "
        "characters (lm-eval's acc_norm)",
        "acc_bytes": "accuracy with each choice's log-likelihood divided by its UTF-8 bytes",
    }
    for m in spec.metric_list:
        register_metric(
            f"{spec.task}.{m.metric}",
            Metric(
                f"{spec.task} {m.metric}",
                higher_is_better=True,
                unit="fraction",
                producer="eval.tasks",
                definition=f"{what[m.metric]}; zero-shot, {spec.output_type}.",
            ),
        )

"""Eval task specs in lm-evaluation-harness's YAML format (the part we support), one per file.

A spec names its data (`dataset_path: json|csv|tsv|text|hellaswag_txt` + local
`dataset_kwargs.data_files`; hub ids are refused for now), how a document becomes a prompt
(`doc_to_text`), its choices (`doc_to_choice`) and its gold answer (`doc_to_target`), as field
names or sandboxed Jinja2 templates, exactly as lm-eval reads them. `!function module.name` is
read for the lm-eval functions compress ships as built-ins (`process.FUNCTIONS`); any other is
refused by name. Keys lm-eval has and we do not run are refused by name; keys neither knows get
a "did you mean". Compress extensions are marked as such (`labels_file`, `doc_to_text_pair`,
output type `embedding_similarity`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

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
    {"filter_list", "generation_kwargs", "repeats", "fewshot_config",
     "doc_to_image", "doc_to_audio", "use_prompt", "include", "group", "class",
     "custom_dataset", "unsafe_code", "gen_prefix", "multiple_input", "multiple_target"}
)  # fmt: skip
PROCESS_DOCS = ("none", "hellaswag_preprocess", "wikitext_pages")
OutputType = Literal[
    "multiple_choice", "loglikelihood", "loglikelihood_rolling", "embedding_similarity"
]
#: the metrics each output type computes (lm-eval's names; the first ones are the defaults)
METRICS_FOR: dict[str, tuple[str, ...]] = {
    "multiple_choice": ("acc", "acc_norm", "acc_bytes"),
    "loglikelihood": ("perplexity", "acc"),
    "loglikelihood_rolling": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
    "embedding_similarity": ("spearman", "pearson"),
}
LOWER_IS_BETTER = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"})


FUNCTION_TAG = "!function "


def function_name(value: object) -> str | None:
    """The dotted name of an lm-eval `!function module.name` value, else None."""
    if isinstance(value, str) and value.startswith(FUNCTION_TAG):
        return value[len(FUNCTION_TAG) :].strip()
    return None


class _SpecLoader(yaml.SafeLoader):
    """yaml.safe_load plus lm-eval's `!function` tag (kept as text, never imported)."""


_SpecLoader.add_constructor(
    "!function", lambda loader, node: FUNCTION_TAG + str(loader.construct_scalar(node))
)


class MetricItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: Literal[
        "acc", "acc_norm", "acc_bytes", "perplexity", "word_perplexity", "byte_perplexity",
        "bits_per_byte", "spearman", "pearson",
    ]  # fmt: skip
    aggregation: str | None = None
    higher_is_better: bool | None = None


class DatasetKwargs(BaseModel):
    """The local-file part of `datasets.load_dataset` keywords (csv: delimiter, column_names,
    quoting as the csv builder takes them)."""

    model_config = ConfigDict(extra="forbid")
    data_files: dict[str, str] | str | None = None
    delimiter: str | None = None
    column_names: list[str] | None = None
    quoting: int | None = Field(None, ge=0, le=3)


class TaskSpec(BaseModel):
    """One task. Field meanings follow lm-evaluation-harness's task YAML."""

    model_config = ConfigDict(extra="forbid")
    task: str
    dataset_path: str = Field(description="json, csv, tsv or hellaswag_txt, with data_files")
    dataset_name: str | None = None
    dataset_kwargs: DatasetKwargs = DatasetKwargs()
    test_split: str | None = None
    validation_split: str | None = None
    output_type: OutputType = "multiple_choice"
    doc_to_text: str | int = ""
    doc_to_target: str | int | float
    doc_to_choice: str | list[str] | None = None
    target_delimiter: str = " "
    description: str = ""
    num_fewshot: int = Field(0, ge=0, le=0, description="zero-shot only (for now)")
    metric_list: list[MetricItem] | None = None
    process_docs: str = Field("none", description=f"a named built-in: {', '.join(PROCESS_DOCS)}")
    process_results: str | None = Field(None, description="only a built-in !function")
    labels_file: str | None = Field(
        None, description="compress extension: gold labels one per line, beside data_files"
    )
    doc_to_text_pair: str | None = Field(
        None, description="compress extension: the second text of an embedding_similarity pair"
    )

    @field_validator("process_docs")
    @classmethod
    def _builtin(cls, v: str) -> str:
        from compress.evaluate.process import FUNCTIONS

        if v in PROCESS_DOCS or function_name(v) in FUNCTIONS:
            return v
        raise ValueError(
            f"process_docs must name a built-in ({', '.join(PROCESS_DOCS)}); Python "
            f"functions ({v}) are not run"
        )

    @field_validator("doc_to_text", "doc_to_target", "doc_to_choice", "process_results")
    @classmethod
    def _known_function(cls, v: object, info: ValidationInfo) -> object:
        from compress.evaluate.process import FUNCTIONS

        name = function_name(v)
        if info.field_name == "process_results" and name is None:
            raise ValueError(
                f"compress does not run process_results {v!r}: only a built-in !function "
                f"({', '.join(sorted(FUNCTIONS))})"
            )
        if name is not None and name not in FUNCTIONS:
            raise ValueError(
                f"'!function {name}' is not a compress built-in (built-ins: "
                f"{', '.join(sorted(FUNCTIONS))}); user Python is never run"
            )
        return v

    @model_validator(mode="after")
    def _fits_output_type(self) -> TaskSpec:
        allowed = METRICS_FOR[self.output_type]
        if self.metric_list is None:
            n = 2 if self.output_type != "loglikelihood_rolling" else 3
            self.metric_list = [MetricItem(metric=m) for m in allowed[:n]]
        for i, m in enumerate(self.metric_list):
            if m.metric not in allowed:
                raise ValueError(
                    f"metric_list.{i}: '{m.metric}' is not computed for output_type "
                    f"{self.output_type} (it computes: {', '.join(allowed)})"
                )
        if self.output_type == "multiple_choice" and self.doc_to_choice is None:
            raise ValueError("doc_to_choice: required for output_type multiple_choice")
        if self.output_type == "embedding_similarity" and self.doc_to_text_pair is None:
            raise ValueError("doc_to_text_pair: required for output_type embedding_similarity")
        return self

    @property
    def metric_names(self) -> list[str]:
        return [m.metric for m in self.metric_list or []]

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
        data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - SafeLoader + one tag
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


_WHAT = {
    "acc": "accuracy: share of items whose highest log-likelihood choice is the gold one "
    "(loglikelihood tasks: whose target is the greedy continuation, token by token)",
    "acc_norm": "accuracy with each choice's log-likelihood divided by its length in "
    "characters (lm-eval's acc_norm)",
    "acc_bytes": "accuracy with each choice's log-likelihood divided by its UTF-8 bytes",
    "perplexity": "exp(mean over items of the target's negative log-likelihood) (lm-eval's "
    "perplexity aggregation)",
    "word_perplexity": "exp(total negative log-likelihood / total words), words counted by "
    "whitespace split (lm-eval's)",
    "byte_perplexity": "exp(total negative log-likelihood / total UTF-8 bytes)",
    "bits_per_byte": "total negative log-likelihood / total UTF-8 bytes / ln 2",
    "spearman": "Spearman rank correlation of the cosine similarity of the two texts' "
    "mean-pooled embeddings with the gold scores",
    "pearson": "Pearson correlation of the cosine similarity with the gold scores",
}
_UNITS = {"perplexity": "ppl", "word_perplexity": "ppl", "byte_perplexity": "ppl",
          "bits_per_byte": "bits/byte", "spearman": "correlation",
          "pearson": "correlation"}  # fmt: skip


def register_task_metrics(spec: TaskSpec) -> None:
    """`<task>.<metric>` names into the metric registry, so gates may name them."""
    from compress.metrics import Metric, register_metric

    for m in spec.metric_names:
        register_metric(
            f"{spec.task}.{m}",
            Metric(
                f"{spec.task} {m}",
                higher_is_better=m not in LOWER_IS_BETTER,
                unit=_UNITS.get(m, "fraction"),
                producer="eval.tasks",
                definition=f"{_WHAT[m]}; zero-shot, {spec.output_type}.",
            ),
        )

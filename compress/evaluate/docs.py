"""A task's documents: read from local files (json/jsonl, csv, tsv, llama.cpp's HellaSwag
text), labels from a separate file when the data ships them so (PIQA), then turned into
(context, choices, gold) with lm-eval's rules for `doc_to_text` / `doc_to_choice` /
`doc_to_target`: a field name reads the field (dotted names reach nested fields), anything
else is a Jinja2 template rendered in a sandbox; a rendered list is parsed as a literal."""

from __future__ import annotations

import ast
import csv
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from compress.data import candidate_dirs
from compress.errors import BadInput
from compress.evaluate.process import FUNCTIONS, process
from compress.evaluate.taskspec import TaskSpec, function_name

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)


@functools.lru_cache(maxsize=256)
def _template(source: str) -> Any:
    """A task's template compiled once, not once per document (compiling dominated loading:
    hellaswag's 10042 documents took 19 s)."""
    return _ENV.from_string(source)


@dataclass(frozen=True)
class Item:
    """One scored document. multiple_choice: the context, its choices, the gold index (with
    `shared_target`, the choices are alternative contexts for that one continuation: lm-eval's
    partial scoring, as for WinoGrande). loglikelihood: `shared_target` after the context.
    loglikelihood_rolling: `shared_target` is the whole text, `count_text` what words and bytes
    are counted on. embedding_similarity: `context` and `pair`, `score` the gold similarity."""

    index: int
    context: str
    choices: list[str]
    gold: int
    shared_target: str | None = None
    count_text: str = ""
    pair: str = ""
    score: float = 0.0


@dataclass(frozen=True)
class TaskData:
    items: list[Item]
    location: str
    sha256: str  # of the data file(s) as read


def _resolve(rel: str, data_dir: str | Path | None) -> Path:
    p = Path(rel).expanduser()
    if p.is_absolute():
        if p.is_file():
            return p
        raise BadInput(f"Data file '{p}' does not exist.")
    tried = []
    for d in candidate_dirs(data_dir):
        tried.append(str(d / rel))
        if (d / rel).is_file():
            return d / rel
    raise BadInput(
        f"Data file '{rel}' not found; looked at: {', '.join(tried)}.",
        fix="Pass --data-dir (or set COMPRESS_DATA_DIR) to the folder holding it.",
    )


def _read_rows(path: Path, text: str, kind: str, kw: Any = None) -> list[dict]:
    if kind == "text":  # as the `datasets` text builder: one row per line, no line ends
        lines = text.split("\n")
        return [{"text": x} for x in (lines[:-1] if text.endswith("\n") else lines)]
    if kind == "json":
        if path.suffix == ".json":
            data = json.loads(text)
            return data if isinstance(data, list) else data.get("data", [])
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BadInput(f"{path}, line {n}: not valid JSON ({e.msg}).") from None
        return rows
    if kind == "hellaswag_txt":
        return _hellaswag_rows(text, path)
    delim = (kw.delimiter if kw and kw.delimiter else None) or ("\t" if kind == "tsv" else ",")
    quoting = kw.quoting if kw and kw.quoting is not None else csv.QUOTE_NONE
    names = kw.column_names if kw else None
    reader = csv.DictReader(text.splitlines(), fieldnames=names, delimiter=delim, quoting=quoting)
    rows = []
    for n, row in enumerate(reader, 1 if names else 2):
        if None in row.values():
            raise BadInput(f"{path}, line {n}: {len(row)} columns expected, fewer found.")
        rows.append(row)
    return rows


def _hellaswag_rows(text: str, path: Path) -> list[dict]:
    """llama.cpp's format: 6 lines per task = context, gold index, 4 endings."""
    lines = text.splitlines()
    if len(lines) % 6:
        raise BadInput(f"{path}: {len(lines)} lines is not a multiple of 6 (context, label, 4).")
    rows = []
    for i in range(0, len(lines), 6):
        if not lines[i + 1].strip().isdigit():
            raise BadInput(f"{path}, line {i + 2}: expected the gold index, got {lines[i + 1]!r}.")
        rows.append({"ctx": lines[i], "label": int(lines[i + 1]), "endings": lines[i + 2 : i + 6]})
    return rows


def _field(doc: dict, name: str) -> Any:
    node: Any = doc
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(name)
        node = node[part]
    return node


def render(template: str | int | float | list, doc: dict, what: str) -> Any:
    """lm-eval's reading of a doc_to_* value for one document."""
    if isinstance(template, int | float | list):
        return template
    fn = function_name(template)
    if fn is not None:
        return FUNCTIONS[fn](doc)
    try:
        return _field(doc, template)
    except KeyError:
        pass
    try:
        out = _template(template).render(**doc)
    except UndefinedError as e:
        fields = ", ".join(sorted(doc))
        raise BadInput(
            f"{what}: template refers to a missing field ({e}); fields: {fields}."
        ) from None
    except TemplateError as e:
        raise BadInput(f"{what}: template error: {e}.") from None
    s = out.strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            return ast.literal_eval(s)
        except (ValueError, SyntaxError):
            return out
    return out


def _gold(target: Any, choices: list[str], where: str) -> int:
    if isinstance(target, bool):
        target = int(target)
    if isinstance(target, str):
        t = target.strip()
        if t in ("True", "False", "true", "false"):
            target = int(t.lower() == "true")
        elif t.lstrip("-").isdigit():
            target = int(t)
        elif t in choices:
            target = choices.index(t)
        else:
            raise BadInput(
                f"{where}: target {target!r} is neither an index nor one of the choices."
            )
    if not 0 <= int(target) < len(choices):
        raise BadInput(f"{where}: label {target} out of range for {len(choices)} choices.")
    return int(target)


def load_docs(
    spec: TaskSpec, data_dir: str | Path | None = None, limit: int | None = None
) -> TaskData:
    """The task's items (first `limit` of them), with the data file's location and hash."""
    files = spec.dataset_kwargs.data_files
    if isinstance(files, dict):
        files = files.get(spec.split) or next(iter(files.values()), None)
    if spec.dataset_path not in READERS or not files:
        raise BadInput(
            f"Task '{spec.task}': dataset_path '{spec.dataset_path}' needs a hub download, "
            f"which this build does not do; point it at local files with dataset_path: "
            f"{'|'.join(READERS)} and dataset_kwargs.data_files.",
        )
    path = _resolve(files, data_dir)
    raw = path.read_bytes()  # read once: parsed and hashed
    rows = _read_rows(path, raw.decode("utf-8"), spec.dataset_path, spec.dataset_kwargs)
    digest = hashlib.sha256(raw)
    if spec.labels_file:
        lpath = _resolve(spec.labels_file, data_dir)
        lraw = lpath.read_bytes()
        labels = [x.strip() for x in lraw.decode("utf-8").splitlines() if x.strip()]
        if len(labels) != len(rows):
            raise BadInput(f"{lpath}: {len(labels)} labels for {len(rows)} documents in {path}.")
        rows = [dict(r, label=lab) for r, lab in zip(rows, labels, strict=True)]
        digest.update(lraw)
    rows = _process(spec, rows)
    if not rows:
        raise BadInput(f"Task '{spec.task}': {path} holds no documents.")
    rows = rows[:limit] if limit else rows
    items = [_item(spec, i, doc) for i, doc in enumerate(rows)]
    return TaskData(items=items, location=str(path), sha256=digest.hexdigest())


READERS = ("json", "csv", "tsv", "text", "hellaswag_txt")


def _process(spec: TaskSpec, rows: list[dict]) -> list[dict]:
    fn = function_name(spec.process_docs)
    if fn is not None:
        return [FUNCTIONS[fn](d) for d in rows]  # type: ignore[misc]
    try:
        return process(spec.process_docs, rows)
    except KeyError as e:
        raise BadInput(
            f"Task '{spec.task}': process_docs {spec.process_docs} needs the field {e} in every "
            "document."
        ) from None


def _item(spec: TaskSpec, i: int, doc: dict) -> Item:
    where = f"task '{spec.task}', document {i}"
    text = render(spec.doc_to_text, doc, f"{where}: doc_to_text")
    target = render(spec.doc_to_target, doc, f"{where}: doc_to_target")
    kind = spec.output_type
    if kind == "loglikelihood":
        return Item(i, str(text), [], 0, shared_target=str(target))
    if kind == "loglikelihood_rolling":
        count = render(spec.process_results, doc, where) if spec.process_results else target
        return Item(i, "", [], 0, shared_target=str(target), count_text=str(count))
    if kind == "embedding_similarity":
        pair = render(spec.doc_to_text_pair, doc, f"{where}: doc_to_text_pair")
        return Item(i, str(text), [], 0, pair=str(pair), score=_score(target, where))
    choices = render(spec.doc_to_choice, doc, f"{where}: doc_to_choice")
    if not isinstance(choices, list) or not choices:
        raise BadInput(f"{where}: doc_to_choice gave {choices!r}, expected a non-empty list.")
    choices = [str(c) for c in choices]
    templated = isinstance(spec.doc_to_text, str) and not _is_field(doc, spec.doc_to_text)
    if templated and isinstance(text, str) and text.isdigit():
        text = int(text)  # lm-eval: a template rendering digits is an index when choices exist
    if isinstance(text, int):  # lm-eval: an int doc_to_text = the gold of alternative contexts
        gold = _gold(text, choices, where)
        return Item(i, "", choices, gold, shared_target=str(target))
    gold = _gold(target, choices, where)
    return Item(index=i, context=str(text), choices=choices, gold=gold)


def _is_field(doc: dict, name: str) -> bool:
    try:
        _field(doc, name)
    except KeyError:
        return False
    return True


def _score(target: Any, where: str) -> float:
    try:
        return float(target)
    except (TypeError, ValueError):
        raise BadInput(f"{where}: doc_to_target gave {target!r}, expected a number.") from None

"""A task's documents: read from local files (json/jsonl, csv, tsv, llama.cpp's HellaSwag
text), labels from a separate file when the data ships them so (PIQA), then turned into
(context, choices, gold) with lm-eval's rules for `doc_to_text` / `doc_to_choice` /
`doc_to_target`: a field name reads the field (dotted names reach nested fields), anything
else is a Jinja2 template rendered in a sandbox; a rendered list is parsed as a literal."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from compress.data import candidate_dirs
from compress.errors import BadInput
from compress.evaluate.process import process
from compress.evaluate.taskspec import TaskSpec

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)


@dataclass(frozen=True)
class Item:
    """One scored document: the context, its choices, the gold index."""

    index: int
    context: str
    choices: list[str]
    gold: int


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


def _read_rows(path: Path, text: str, kind: str) -> list[dict]:
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
    delim = "\t" if kind == "tsv" else ","
    return list(csv.DictReader(text.splitlines(), delimiter=delim, quoting=csv.QUOTE_NONE))


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


def render(template: str | int | list, doc: dict, what: str) -> Any:
    """lm-eval's reading of a doc_to_* value for one document."""
    if isinstance(template, int | list):
        return template
    try:
        return _field(doc, template)
    except KeyError:
        pass
    try:
        out = _ENV.from_string(template).render(**doc)
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
    if spec.dataset_path not in ("json", "csv", "tsv", "hellaswag_txt") or not files:
        raise BadInput(
            f"Task '{spec.task}': dataset_path '{spec.dataset_path}' needs a hub download, "
            "which this build does not do; point it at local files with dataset_path: json|csv|"
            "tsv and dataset_kwargs.data_files.",
        )
    path = _resolve(files, data_dir)
    raw = path.read_bytes()  # read once: parsed and hashed
    rows = _read_rows(path, raw.decode("utf-8"), spec.dataset_path)
    digest = hashlib.sha256(raw)
    if spec.labels_file:
        lpath = _resolve(spec.labels_file, data_dir)
        lraw = lpath.read_bytes()
        labels = [x.strip() for x in lraw.decode("utf-8").splitlines() if x.strip()]
        if len(labels) != len(rows):
            raise BadInput(f"{lpath}: {len(labels)} labels for {len(rows)} documents in {path}.")
        rows = [dict(r, label=lab) for r, lab in zip(rows, labels, strict=True)]
        digest.update(lraw)
    if not rows:
        raise BadInput(f"Task '{spec.task}': {path} holds no documents.")
    rows = rows[:limit] if limit else rows
    items = [_item(spec, i, doc) for i, doc in enumerate(rows)]
    return TaskData(items=items, location=str(path), sha256=digest.hexdigest())


def _item(spec: TaskSpec, i: int, doc: dict) -> Item:
    doc = process(spec.process_docs, doc)
    where = f"task '{spec.task}', document {i}"
    context = str(render(spec.doc_to_text, doc, f"{where}: doc_to_text"))
    choices = render(spec.doc_to_choice, doc, f"{where}: doc_to_choice")
    if not isinstance(choices, list) or not choices:
        raise BadInput(f"{where}: doc_to_choice gave {choices!r}, expected a non-empty list.")
    choices = [str(c) for c in choices]
    gold = _gold(render(spec.doc_to_target, doc, f"{where}: doc_to_target"), choices, where)
    return Item(index=i, context=context, choices=choices, gold=gold)

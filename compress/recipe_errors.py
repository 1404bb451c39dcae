"""Pydantic validation errors of a recipe as one message a person can act on: the field path,
what was expected and, for near misses, what was probably meant."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError

from compress.errors import did_you_mean
from compress.methods import method_names


def _field_names_at(root: type[BaseModel], loc: tuple, data: Any) -> list[str]:
    """The allowed keys of the model at `loc` under `root` (for 'did you mean')."""
    model: Any = root
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


def format_validation_error(
    err: ValidationError, data: Any, source: str, root: type[BaseModel]
) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc if not (isinstance(p, str) and p in method_names()))
        kind = e["type"]
        if kind == "extra_forbidden":
            allowed = _field_names_at(root, loc, data)
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

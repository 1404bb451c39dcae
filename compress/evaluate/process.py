"""Named `process_docs` built-ins (a spec names one; no user Python runs)."""

from __future__ import annotations

import re


def _hellaswag_clean(text: str) -> str:
    """lm-eval's hellaswag `preprocess`: strip, drop ' [title]', '[...]' tags, double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_preprocess(doc: dict) -> dict:
    """llama.cpp's HellaSwag lines carry `activity_label: ctx` already joined; lm-eval builds
    query = preprocess(activity_label + ': ' + ctx_a + ' ' + ctx_b.capitalize()) and
    preprocesses each ending. Here the joined context is preprocessed as one string."""
    return dict(
        doc,
        query=_hellaswag_clean(doc["ctx"]),
        choices=[_hellaswag_clean(e) for e in doc["endings"]],
        gold=int(doc["label"]),
    )


def process(name: str, doc: dict) -> dict:
    if name == "none":
        return doc
    if name == "hellaswag_preprocess":
        return hellaswag_preprocess(doc)
    raise ValueError(f"unknown process_docs built-in '{name}'")

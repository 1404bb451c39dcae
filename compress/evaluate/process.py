"""Named `process_docs` built-ins and the lm-eval `!function`s compress ships (a spec names
one; no user Python runs). `process_docs` built-ins take the whole list of documents, as
lm-eval's do, so they may regroup them (WikiText lines into articles)."""

from __future__ import annotations

import re
from collections.abc import Callable


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


def _is_title(line: str) -> bool:
    """A level-1 heading (' = Title = '), not a section (' = = Section = = ')."""
    s = line.replace("= = =", "===").replace("= =", "==").strip()
    return s.startswith("= ") and s.endswith(" =")


def wikitext_pages(rows: list[dict]) -> list[dict]:
    """The raw WikiText file's lines (`dataset_path: text`) regrouped into articles, as the
    `EleutherAI/wikitext_document_level` dataset that lm-eval's `wikitext` task reads has them:
    a page starts at each level-1 heading and is its lines joined by newlines."""
    pages: list[list[str]] = []
    for row in rows:
        line = row["text"]
        if _is_title(line) or not pages:
            pages.append([])
        pages[-1].append(line)
    return [{"page": "\n".join(p)} for p in pages if "".join(p).strip()]


def wikitext_detokenizer(doc: dict) -> str:
    """lm-eval's `preprocess_wikitext.wikitext_detokenizer`: undo WikiText's tokenisation."""
    s = doc["page"].replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "),
                 (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", ")):  # fmt: skip
        s = s.replace(a, b)
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    for a, b in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="),
                 (" " + chr(176) + " ", chr(176)), (" \n", "\n"), ("\n ", "\n"),
                 (" N ", " 1 "), (" 's", "'s")):  # fmt: skip
        s = s.replace(a, b)
    return s


def wikitext_count_text(doc: dict) -> str:
    """lm-eval's `preprocess_wikitext.process_results` counts words and bytes of the original
    page (before detokenisation): this names that text."""
    return doc["page"]


#: lm-eval `!function module.name` values compress runs as built-ins
FUNCTIONS: dict[str, Callable[[dict], object]] = {
    "preprocess_wikitext.wikitext_detokenizer": wikitext_detokenizer,
    "preprocess_wikitext.process_results": wikitext_count_text,
}


def process(name: str, rows: list[dict]) -> list[dict]:
    """Apply the named `process_docs` built-in to all documents."""
    if name == "none":
        return rows
    if name == "hellaswag_preprocess":
        return [hellaswag_preprocess(d) for d in rows]
    if name == "wikitext_pages":
        return wikitext_pages(rows)
    raise ValueError(f"unknown process_docs built-in '{name}'")

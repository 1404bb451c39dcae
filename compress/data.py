"""Evaluation and calibration text from local files or the hub, with content hashes.

Local copies are looked for in, in order: an explicit `data_dir` (CLI --data-dir or the
recipe's eval.data_dir), $COMPRESS_DATA_DIR, and ../shared/data relative to the working
directory (where the development machines keep them). Then the hub, via `datasets`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.errors import BadInput

log = logging.getLogger(__name__)

WIKITEXT2_TEST = (
    "wikitext-2-raw/wikitext-2-raw-v1.test.hf_rows.jsonl",
    "wikitext-2-raw/wiki.test.raw",
)
WIKITEXT2_HUB = ("wikitext", "wikitext-2-raw-v1", "test")
WIKITEXT2_DEFINITION = (
    "WikiText-2 (raw) test split as the `datasets` rows joined with '\\n\\n' (the GPTQ/AWQ "
    "papers' text), tokenized once with the model's tokenizer (default special tokens), cut "
    "into non-overlapping windows of seq_len tokens (the tail shorter than a window dropped); "
    "each window is scored on its own, predicting tokens 2..seq_len; perplexity = exp(mean "
    "token negative log-likelihood over all predicted tokens of the scored windows)."
)


@dataclass
class TextData:
    name: str
    text: str
    source: str  # "local" or "hub"
    location: str  # file path or hub id
    sha256: str  # of the exact text that was tokenized

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "location": self.location,
            "text_sha256": self.sha256,
            "text_bytes": len(self.text.encode("utf-8")),
        }


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def candidate_dirs(data_dir: str | Path | None = None) -> list[Path]:
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get("COMPRESS_DATA_DIR"):
        dirs.append(Path(os.environ["COMPRESS_DATA_DIR"]).expanduser())
    dirs.append(Path("../shared/data"))
    return dirs


def rows_from_raw(raw: str) -> list[str]:
    """The raw file's lines as `datasets` yields them: blank lines become ''."""
    return [line if line.strip() else "" for line in raw.splitlines(keepends=True)]


def wikitext2_test(data_dir: str | Path | None = None) -> TextData:
    tried = []
    for d in candidate_dirs(data_dir):
        for rel in WIKITEXT2_TEST:
            p = d / rel
            tried.append(str(p))
            if p.is_file():
                if p.suffix == ".jsonl":
                    with p.open(encoding="utf-8") as f:
                        rows = [json.loads(line)["text"] for line in f]
                else:
                    rows = rows_from_raw(p.read_text(encoding="utf-8"))
                text = "\n\n".join(rows)
                log.info("wikitext2 test from %s", p)
                return TextData("wikitext2", text, "local", str(p.resolve()), sha256_text(text))
    try:
        from datasets import load_dataset

        ds = load_dataset(*WIKITEXT2_HUB[:2], split=WIKITEXT2_HUB[2])
        text = "\n\n".join(ds["text"])
        return TextData("wikitext2", text, "hub", "/".join(WIKITEXT2_HUB), sha256_text(text))
    except Exception as e:  # offline, hub down, datasets missing: say where we looked
        raise BadInput(
            "WikiText-2 test data not found. Looked for a local copy at: "
            + ", ".join(tried)
            + f"; then tried the hub dataset '{WIKITEXT2_HUB[0]}' ({WIKITEXT2_HUB[1]}) and got: "
            + f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}.",
            fix="Pass --data-dir (or set COMPRESS_DATA_DIR) to a folder holding "
            f"{WIKITEXT2_TEST[1]}, or go online so the hub dataset can be downloaded.",
        ) from None


def token_windows(
    tokenizer: Any, text: str, seq_len: int, max_windows: int | None = None
) -> tuple[Any, int, str]:
    """Tokenize once; return (windows [n, seq_len] LongTensor, total tokens, ids sha256)."""
    import torch

    ids = tokenizer(text, return_attention_mask=False)["input_ids"]
    n_total = len(ids)
    n = n_total // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise BadInput(
            f"The eval text has {n_total} tokens, fewer than one window of {seq_len}.",
            fix="Lower eval.wikitext2.seq_len.",
        )
    t = torch.tensor(ids[: n * seq_len], dtype=torch.long).reshape(n, seq_len)
    digest = hashlib.sha256(t.numpy().tobytes()).hexdigest()
    return t, n_total, digest

"""A baseline's raw task results on disk, so re-running a recipe does not re-score it.

The key is the sha256 of: the model's weights and config (every tensor's bytes), the
tokenizer, the task spec's hash, the data file's hash, the scoring options (item limit, max
length, context sharing) and the code version (compress's version plus the hash of the scoring
modules' source). Any change in any of them is a miss. Entries are written atomically; a
corrupt entry is a miss, never an error. Location: $COMPRESS_EVAL_CACHE, else
~/.cache/compress/evals.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

_SOURCES = ("scoring.py", "choice.py", "rolling.py", "embedding.py", "docs.py", "process.py")


def cache_dir() -> Path:
    env = os.environ.get("COMPRESS_EVAL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "compress" / "evals"


def code_version() -> str:
    """compress's version plus a hash of the modules that turn documents into scores."""
    from compress import __version__

    digest = hashlib.sha256(__version__.encode())
    here = Path(__file__).parent
    for name in _SOURCES:
        digest.update((here / name).read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def model_fingerprint(model: nn.Module, tokenizer: Any) -> str:
    """sha256 of every tensor (name, dtype, shape, bytes), the config and the tokenizer."""
    digest = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_json_string"):
        digest.update(cfg.to_json_string().encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab())
    digest.update(vocab.encode())
    return digest.hexdigest()


def key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def load(k: str) -> list | None:
    path = cache_dir() / f"{k}.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc["results"] if doc.get("key") == k else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(k: str, parts: dict[str, Any], results: list) -> Path | None:
    """Write one entry atomically; a cache that cannot be written is logged, not fatal."""
    from compress.report.io import atomic_write_text

    path = cache_dir() / f"{k}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"key": k, "parts": parts, "results": results}))
    except OSError as e:
        log.warning("could not write the eval cache %s: %s", path, e)
        return None
    return path

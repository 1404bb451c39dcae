"""A disk cache of GGUF models as transformers dequantizes them.

Loading a GGUF through transformers dequantizes every tensor in Python (about 50 s for
SmolLM2-135M on a 2-core Xeon); the result is a deterministic function of the file, the
dtype and the versions of transformers and gguf. The first load saves it (safetensors weights,
config and tokenizer files, written to a temporary folder and renamed into place), later loads
read that folder in seconds. The key is the GGUF file's sha256 plus those versions, so a new
file or a new transformers never reads a stale copy; a cache entry that fails to load is
ignored (and logged), never trusted half-way.

Location: COMPRESS_DEQUANT_CACHE, else `dequantized/` beside the model cache
(~/.cache/compress/dequantized). COMPRESS_DEQUANT_CACHE=off disables it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = 1
_OFF = ("0", "off", "false", "no")
_KEY_FILE = "compress_dequant.json"


def cache_root() -> Path | None:
    """Where dequantized copies live; None when disabled."""
    env = os.environ.get("COMPRESS_DEQUANT_CACHE", "")
    if env.strip().lower() in _OFF:
        return None
    if env:
        return Path(env).expanduser()
    from compress.store.cache import default_cache_dir

    return default_cache_dir().parent / "dequantized"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("transformers", "gguf", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def cache_key(gguf: Path, dtype: str) -> dict[str, Any]:
    """What a cached copy must match: the file's bytes, the dtype and the converters."""
    from compress.store.cache import _sha256

    return {
        "format": FORMAT,
        "gguf_sha256": _sha256(gguf),
        "gguf_name": gguf.name,
        "dtype": dtype,
        "versions": _versions(),
    }


@dataclass(frozen=True)
class Entry:
    """The cache folder of one (GGUF file, dtype, converter versions) and the key it holds."""

    path: Path
    key: dict[str, Any]


def entry_for(gguf: Path, dtype: str) -> Entry | None:
    """Where `gguf` dequantized to `dtype` is (or will be) cached; None when the cache is off.
    Hashes the file once: the same Entry serves the lookup and, on a miss, the store."""
    root = cache_root()
    if root is None:
        return None
    key = cache_key(gguf, dtype)
    blob = json.dumps(key, sort_keys=True).encode()
    name = f"{Path(key['gguf_name']).stem}-{hashlib.sha256(blob).hexdigest()[:16]}"
    return Entry(root / name, key)


def load_cached(entry: Entry, auto: Any, trust_remote_code: bool) -> tuple | None:
    """(model, tokenizer) from the cache, or None when absent or unreadable (the caller then
    dequantizes the GGUF itself)."""
    try:
        if json.loads((entry.path / _KEY_FILE).read_text()) != entry.key:
            return None
    except (OSError, ValueError):
        return None
    import torch
    from transformers import AutoTokenizer

    try:
        model = auto.from_pretrained(
            entry.path,
            dtype=getattr(torch, entry.key["dtype"]),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        )
        tokenizer = AutoTokenizer.from_pretrained(entry.path, trust_remote_code=trust_remote_code)
    except Exception as e:  # a damaged entry: dequantize afresh (and overwrite it)
        log.warning("ignoring the dequantized cache at %s: %s", entry.path, e)
        return None
    return model, tokenizer


def store(entry: Entry, model: Any, tokenizer: Any) -> Path | None:
    """Save a freshly dequantized model for the next load; failures are logged, not raised
    (the cache is an optimization, the load already succeeded)."""
    root = entry.path.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / _KEY_FILE).write_text(json.dumps(entry.key, indent=2, sort_keys=True))
            shutil.rmtree(entry.path, ignore_errors=True)
            os.replace(tmp, entry.path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        log.warning("could not cache the dequantized model under %s: %s", root, e)
        return None
    log.info("cached the dequantized %s (%s) at %s", entry.key["gguf_name"], entry.key["dtype"],
             entry.path)  # fmt: skip
    return entry.path

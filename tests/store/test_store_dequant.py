"""compress.store.dequant: the disk cache of dequantized GGUF models. A stored copy loads back
bit for bit; another file, dtype or converter version never reads it; a damaged or disabled
cache is ignored; nothing half-written is left behind."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from compress.store import dequant
from compress.testing import tiny_handle


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_DEQUANT_CACHE", str(tmp_path / "dq"))
    gguf = tmp_path / "m.Q4.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(200)))
    return tmp_path / "dq", gguf


def _load(gguf, dtype="float32"):
    entry = dequant.entry_for(gguf, dtype)
    return None if entry is None else dequant.load_cached(entry, AutoModelForCausalLM, False)


def _store(h, gguf, dtype="float32"):
    entry = dequant.entry_for(gguf, dtype)
    return None if entry is None else dequant.store(entry, h.model, h.tokenizer)


def test_stored_copy_loads_back_bit_for_bit(cache):
    root, gguf = cache
    h = tiny_handle()
    assert _load(gguf) is None  # nothing cached yet
    entry = _store(h, gguf)
    assert entry is not None and entry.parent == root
    assert [p.name for p in root.iterdir()] == [entry.name]  # no .partial left
    key = json.loads((entry / "compress_dequant.json").read_text())
    assert key["gguf_sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert key["dtype"] == "float32" and dequant.entry_for(gguf, "float32").path == entry
    model, tok = _load(gguf)
    a, b = h.model.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert tok("hello there").input_ids == h.tokenizer("hello there").input_ids


def test_another_file_dtype_or_version_misses(cache, monkeypatch):
    _, gguf = cache
    h = tiny_handle()
    _store(h, gguf)
    assert _load(gguf, "bfloat16") is None
    monkeypatch.setattr(dequant, "_versions", lambda: {"transformers": "0.0.1"})
    assert _load(gguf) is None
    monkeypatch.undo()
    monkeypatch.setenv("COMPRESS_DEQUANT_CACHE", str(cache[0]))
    gguf.write_bytes(gguf.read_bytes() + b"x")  # the same name, other bytes
    assert _load(gguf) is None


def test_a_damaged_entry_is_ignored(cache, caplog):
    _, gguf = cache
    h = tiny_handle()
    entry = _store(h, gguf)
    (entry / "model.safetensors").write_bytes(b"not safetensors")
    with caplog.at_level("WARNING"):
        assert _load(gguf) is None
    assert "ignoring the dequantized cache" in caplog.text
    assert _store(h, gguf) == entry  # rewritten whole
    assert _load(gguf) is not None


@pytest.mark.parametrize("value", ["off", "0", "false"])
def test_disabled_cache_writes_and_reads_nothing(tmp_path, monkeypatch, value):
    monkeypatch.setenv("COMPRESS_DEQUANT_CACHE", value)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    h = tiny_handle()
    assert dequant.cache_root() is None
    assert _store(h, gguf) is None
    assert _load(gguf) is None
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_default_location_is_beside_the_model_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPRESS_DEQUANT_CACHE", raising=False)
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "models"))
    assert dequant.cache_root() == tmp_path / "dequantized"


def test_an_unwritable_cache_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("COMPRESS_DEQUANT_CACHE", str(blocker / "sub"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    h = tiny_handle()
    with caplog.at_level("WARNING"):
        assert _store(h, gguf) is None
    assert "could not cache" in caplog.text

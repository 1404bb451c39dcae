"""compress.data: WikiText-2 lookup order, row reconstruction, token windows."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import compress
from compress.data import (
    WIKITEXT2_TEST,
    candidate_dirs,
    rows_from_raw,
    sha256_text,
    token_windows,
    wikitext2_test,
)
from compress.errors import BadInput
from compress.testing import tiny_tokenizer

SHARED = Path(compress.__file__).resolve().parents[1].parent / "shared" / "data"
RAW = " \n = Title = \n \n First line .\n Second line .\n \n = = Sub = = \n \n Last .\n"


@pytest.fixture()
def no_local_data(monkeypatch, tmp_path):
    monkeypatch.delenv("COMPRESS_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # ../shared/data does not exist from here
    return tmp_path


def _write_raw(root: Path, text: str = RAW) -> Path:
    p = root / "wikitext-2-raw" / "wiki.test.raw"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return root


def test_rows_from_raw_blank_lines_become_empty_rows():
    assert rows_from_raw(RAW) == [
        "",
        " = Title = \n",
        "",
        " First line .\n",
        " Second line .\n",
        "",
        " = = Sub = = \n",
        "",
        " Last .\n",
    ]
    assert rows_from_raw("") == []
    assert rows_from_raw("a\n\t \nb") == ["a\n", "", "b"]


def test_wikitext2_from_data_dir(no_local_data):
    root = _write_raw(no_local_data / "d")
    td = wikitext2_test(root)
    expected = "\n\n".join(rows_from_raw(RAW))
    assert td.text == expected
    assert td.text.startswith("\n\n = Title = \n" + "\n\n" + "\n\n" + " First line .\n")
    assert (
        td.sha256 == hashlib.sha256(expected.encode("utf-8")).hexdigest() == sha256_text(expected)
    )
    assert td.source == "local" and td.name == "wikitext2"
    assert td.location == str((root / WIKITEXT2_TEST[1]).resolve())
    d = td.describe()
    assert d["text_bytes"] == len(expected.encode()) and d["text_sha256"] == td.sha256


def test_jsonl_rows_preferred_over_raw(no_local_data):
    root = _write_raw(no_local_data / "d", "ignored\n")
    rows = ["", " = A = \n", "", " b .\n"]
    with (root / WIKITEXT2_TEST[0]).open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"text": r}) + "\n")
    td = wikitext2_test(root)
    assert td.text == "\n\n".join(rows)
    assert td.location.endswith(".jsonl")


def test_lookup_order_data_dir_then_env(no_local_data, monkeypatch):
    a = _write_raw(no_local_data / "a", "from a\n")
    b = _write_raw(no_local_data / "b", "from b\n")
    monkeypatch.setenv("COMPRESS_DATA_DIR", str(b))
    assert candidate_dirs(a) == [a, b, Path("../shared/data")]
    assert wikitext2_test(a).text == "from a\n"
    assert wikitext2_test().text == "from b\n"
    assert wikitext2_test(no_local_data / "empty").text == "from b\n"


def test_shared_copy_is_the_hf_test_split():
    if not (SHARED / "wikitext-2-raw").is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    td = wikitext2_test(SHARED)
    assert len(td.text.encode("utf-8")) == 1_296_370
    assert td.source == "local"


def test_raw_file_alone_gives_the_same_text_as_the_rows(no_local_data):
    raw = SHARED / WIKITEXT2_TEST[1]
    if not raw.is_file():
        pytest.skip(f"shared raw file not found at {raw}")
    root = no_local_data / "copy"
    (root / "wikitext-2-raw").mkdir(parents=True)
    shutil.copy(raw, root / WIKITEXT2_TEST[1])
    td = wikitext2_test(root)
    assert td.location.endswith("wiki.test.raw")
    assert len(td.text.encode("utf-8")) == 1_296_370
    jsonl = SHARED / WIKITEXT2_TEST[0]
    if jsonl.is_file():
        assert td.sha256 == wikitext2_test(SHARED).sha256


def test_missing_everywhere_names_paths_and_hub(no_local_data, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BadInput) as ei:
        wikitext2_test(no_local_data / "nowhere")
    msg = str(ei.value)
    for rel in WIKITEXT2_TEST:
        assert str(no_local_data / "nowhere" / rel) in msg
        assert str(Path("../shared/data") / rel) in msg
    assert "'wikitext'" in msg and "ConnectionError: no network" in msg
    assert "second line" not in msg
    assert "--data-dir" in msg


def test_token_windows_shape_and_hash():
    tok = tiny_tokenizer()
    text = "abcdefghij" * 10  # 100 characters -> 100 tokens
    w, total, digest = token_windows(tok, text, 16)
    assert total == 100 and w.shape == (6, 16) and w.dtype == torch.long
    assert w.flatten().tolist() == tok(text)["input_ids"][:96]
    assert digest == hashlib.sha256(w.numpy().tobytes()).hexdigest()
    w2, _, digest2 = token_windows(tok, text, 16)
    assert torch.equal(w, w2) and digest2 == digest
    w3, total3, digest3 = token_windows(tok, text, 16, max_windows=2)
    assert w3.shape == (2, 16) and total3 == 100 and torch.equal(w3, w[:2])
    assert digest3 != digest
    _, _, other = token_windows(tok, "abcdefghiX" + text[10:], 16)
    assert other != digest


def test_token_windows_text_too_short():
    with pytest.raises(BadInput, match="fewer than one window of 64"):
        token_windows(tiny_tokenizer(), "short text", 64)

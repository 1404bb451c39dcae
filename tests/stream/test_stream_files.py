"""Tensors read by name from safetensors folders (plain reads, cast as read) are exactly the
tensors safetensors itself loads."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from compress.stream import files


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "SLICE", 1000)  # so the 300 x 70 tensor is read in slices
    g = torch.Generator().manual_seed(0)
    t = {
        "a": torch.randn(300, 70, generator=g),
        "b": torch.randn(5, generator=g).to(torch.bfloat16),
        "c": torch.tensor(3),
        "d": torch.randint(0, 9, (4, 6), dtype=torch.uint8, generator=g),
        "e": torch.zeros(0, 3),
    }
    save_file({k: v for k, v in t.items() if k in "ab"}, str(tmp_path / "m-1.safetensors"))
    save_file({k: v for k, v in t.items() if k in "cde"}, str(tmp_path / "m-2.safetensors"))
    index = {"weight_map": {k: "m-1.safetensors" if k in "ab" else "m-2.safetensors" for k in t}}
    (tmp_path / files.INDEX).write_text(json.dumps(index))
    return tmp_path, t


def test_reads_every_tensor_exactly(folder):
    path, t = folder
    tf = files.TensorFiles(path)
    got = tf.read(list(t))
    assert all(torch.equal(got[k], t[k]) and got[k].dtype == t[k].dtype for k in t)
    assert tf.nbytes("a") == 300 * 70 * 4 and "a" in tf and "z" not in tf


def test_casts_as_it_reads(folder):
    path, t = folder
    got = files.TensorFiles(path).read(["a", "b"], {"a": torch.bfloat16, "b": torch.float32})
    assert torch.equal(got["a"], t["a"].to(torch.bfloat16))
    assert torch.equal(got["b"], t["b"].float())


def test_a_truncated_file_is_an_error(tmp_path):
    save_file({"w": torch.ones(100)}, str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-40])
    with pytest.raises(OSError, match="ends inside"):
        files.TensorFiles(tmp_path).read(["w"])


def test_single_file_folder(tmp_path):
    save_file({"w": torch.arange(6.0)}, str(tmp_path / "model.safetensors"))
    assert torch.equal(files.TensorFiles(tmp_path).read(["w"])["w"], load_file(
        str(tmp_path / "model.safetensors"))["w"])  # fmt: skip

"""`compress export`: formats, the records beside the files, and bad input (exit 2)."""

from __future__ import annotations

import json

import pytest
from test_cli import run  # tests/ is on sys.path (rootdir conftest)

from compress.methods import rtn, run_stage
from compress.quant.serialize import save_compressed
from compress.testing import tiny_handle


@pytest.fixture
def saved(tmp_path):
    h = tiny_handle()
    h.stages.append(run_stage(h, rtn.RTNConfig(bits=4, group_size=32)).model_dump(mode="json"))
    return save_compressed(h, tmp_path / "run" / "model")


def test_compressed_tensors_export_of_a_run(saved, tmp_path):
    pytest.importorskip("compressed_tensors")
    res = run("export", saved.parent, "--format", "compressed-tensors")
    assert res.exit_code == 0, res.output
    out = saved.parent / "exports"
    assert (out / "run-ct" / "config.json").is_file()
    record = json.loads((out / "run.compressed-tensors.json").read_text())
    assert record["schemes"] == {"4-bit group 32 sym": 14}
    again = run("export", saved.parent, "--format", "compressed-tensors")
    assert again.exit_code == 2 and "never overwritten" in again.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--format", "safetensors"), "supported: gguf, compressed-tensors, onnx"),
        (("--format", "gguf"), "not loaded from a .gguf"),
        (("--format", "onnx"), "onnx_int8"),
        (("--format", "gguf", "--variant", "nope"), "no variant 'nope'"),
    ],
)
def test_bad_input_is_exit_2_naming_the_problem(saved, args, message):
    res = run("export", saved.parent, *args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())


def test_a_folder_without_a_model_is_exit_2(tmp_path):
    res = run("export", tmp_path, "--format", "gguf")
    assert res.exit_code == 2 and "no saved model" in " ".join(res.output.split())


def test_an_unwritable_output_folder_is_exit_2(saved, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # unwritable even for root: a file in the path
    res = run("export", saved.parent, "--format", "compressed-tensors", "--out", blocker / "x")
    assert res.exit_code == 2 and "cannot write" in " ".join(res.output.split())

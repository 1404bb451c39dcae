"""Every calibrated method of the shared layer-by-layer loop, rtn and magnitude run on a model
streamed from disk and write bit-identical weights to the in-memory run, one layer held at a
time; the stage record (sparsity counted per layer, scale search) is the same; what cannot
stream (targets outside the decoder layers) is refused before any layer changes."""

from __future__ import annotations

import pytest
import torch

from compress.errors import BadInput
from compress.handle import ModelHandle, ModelSource
from compress.methods import METHODS, StageContext
from compress.methods.awq import AWQConfig
from compress.methods.magnitude import MagnitudeConfig
from compress.methods.rtn import RTNConfig
from compress.methods.smoothquant import SmoothQuantConfig
from compress.methods.sparsegpt import SparseGPTConfig
from compress.methods.wanda import WandaConfig
from compress.quant.serialize import read_tensors, save_compressed
from compress.stream.model import StreamedModel
from compress.stream.save import save
from compress.testing import tiny_calibration, tiny_llama, tiny_tokenizer

CONFIGS = {
    "awq": AWQConfig(group_size=32),
    "smoothquant": SmoothQuantConfig(),
    "wanda": WandaConfig(sparsity=0.5),
    "sparsegpt-2:4": SparseGPTConfig(sparsity=0.5, mask_structure="2:4"),
    "rtn-int4": RTNConfig(bits=4, group_size=32, symmetric=False),
    "rtn-int8": RTNConfig(bits=8),
    "magnitude": MagnitudeConfig(sparsity=0.5),
    "magnitude-2:4": MagnitudeConfig(mask_structure="2:4"),
}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny"
    tiny_llama(0).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def handle(model, path) -> ModelHandle:
    src = ModelSource(spec=str(path), kind="local_dir", path=path)
    return ModelHandle(model=model, tokenizer=tiny_tokenizer(), source=src, dtype="float32",
                       device="cpu")  # fmt: skip


def run(cfg, h: ModelHandle):
    cal = tiny_calibration()
    return METHODS[cfg.method].apply(StageContext(model=h, calibration_loader=lambda: cal), cfg)


def comparable(record) -> dict:
    """The record without its timings (wall seconds differ run to run)."""
    d = record.model_dump(mode="json")
    d["details"] = {k: v for k, v in d["details"].items() if "seconds" not in k}
    return {k: v for k, v in d.items() if "seconds" not in k}


@pytest.mark.parametrize("which", list(CONFIGS))
def test_streamed_method_writes_identical_weights(which, base_dir, tmp_path):
    cfg = CONFIGS[which]
    mem = handle(tiny_llama(0), base_dir)
    want = run(cfg, mem)
    save_compressed(mem, tmp_path / "mem")
    sm = StreamedModel.open(base_dir).variant(tmp_path / "scratch")
    st = handle(sm.model, base_dir)
    got = run(cfg, st)
    save(sm, st, tmp_path / "stream")
    a, b = read_tensors(tmp_path / "mem"), read_tensors(tmp_path / "stream")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert sm.peak_blocks == 1  # the loop held one layer at a time
    assert comparable(got) == comparable(want)
    ids = tiny_calibration(samples=2).input_ids
    with torch.no_grad():
        streamed_logits = StreamedModel.open_compressed(tmp_path / "stream").model(ids).logits
        assert torch.equal(streamed_logits, mem.model(ids).logits)


def test_pruning_counts_zeros_of_the_streamed_layers(base_dir, tmp_path):
    sm = StreamedModel.open(base_dir).variant(tmp_path / "scratch")
    rec = run(CONFIGS["sparsegpt-2:4"], handle(sm.model, base_dir)).model_dump(mode="json")
    rec = rec["details"]
    assert rec["pattern_measured"] == "2:4" and rec["sparsity"] == pytest.approx(0.5)
    assert all(p["zeros"] > 0 for p in rec["per_layer"].values())


@pytest.mark.parametrize("which", ["awq", "smoothquant", "rtn-int8", "magnitude"])
def test_targets_outside_the_layers_are_refused_before_anything_changes(which, base_dir, tmp_path):
    cfg = CONFIGS[which].model_copy(update={"ignore": []})  # lm_head targeted too
    sm = StreamedModel.open(base_dir).variant(tmp_path / "scratch")
    with pytest.raises(BadInput, match="outside the decoder layers.*lm_head"):
        run(cfg, handle(sm.model, base_dir))
    assert not sm.resident and not any((tmp_path / "scratch").glob("*.safetensors"))

"""The real Gemma 3 (270M, 18 layers, sliding and full attention layers with different
keyword arguments) calibrated by GPTQ layer by layer from disk writes bit-identical weights
to the in-memory path, and its streamed forward gives the in-memory logits. About two
minutes on 2 cores (the first load dequantizes the GGUF into the disk cache)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration

CFG = {"bits": 4, "group_size": 64, "symmetric": True}


@pytest.fixture(scope="module")
def gemma(shared_data_module):
    from compress import models
    from compress.calibration.calibrate import load_calibration
    from compress.recipe import Calibration
    from compress.stream.budget import stream_folder

    h = models.load("gemma3-270m", dtype="float32")  # fills the dequantized cache
    folder = stream_folder(h.source)
    assert folder is not None, "the dequantized copy of the GGUF was not cached"
    cal = load_calibration(
        h.tokenizer, Calibration(samples=4, seq_len=64), data_dir=shared_data_module
    )
    return h, folder, cal


def test_gemma3_layer_by_layer_gptq_is_bit_identical(gemma, tmp_path):
    from compress.handle import ModelHandle
    from compress.methods import METHODS, StageContext
    from compress.methods.gptq import GPTQConfig
    from compress.quant.serialize import read_tensors, save_compressed
    from compress.stream.model import StreamedModel
    from compress.stream.save import save

    h, folder, cal = gemma
    cfg = GPTQConfig(**CFG)
    METHODS["gptq"].apply(StageContext(model=h, calibration_loader=lambda: cal), cfg)
    save_compressed(h, tmp_path / "memory")

    sm = StreamedModel.open(folder).variant(tmp_path / "scratch")
    hs = ModelHandle(model=sm.model, tokenizer=h.tokenizer, source=h.source, dtype="float32",
                     device="cpu")  # fmt: skip
    METHODS["gptq"].apply(StageContext(model=hs, calibration_loader=lambda: cal), cfg)
    assert sm.peak_blocks == 1
    save(sm, hs, tmp_path / "streamed")

    a, b = read_tensors(tmp_path / "memory"), read_tensors(tmp_path / "streamed")
    assert a.keys() == b.keys() and len(a) > 18 * 7
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def test_gemma3_streamed_forward_matches(gemma):
    from compress import models
    from compress.stream.model import StreamedModel

    _, folder, cal = gemma
    ids = cal.input_ids[:2]
    fresh = models.load("gemma3-270m", dtype="float32").model
    sm = StreamedModel.open(folder)
    with torch.no_grad():
        want = fresh(ids).logits
        got = sm.model(ids).logits
    assert torch.equal(want, got)
    assert not sm.resident


def test_gemma3_layer_by_layer_structured_is_bit_identical(gemma, tmp_path):
    """Depth (sliding and full attention layers renumbered, `layer_types` cut to match) and
    MLP width on the real model: streamed and in-memory write the same weights and config."""
    import json

    from compress import models
    from compress.handle import ModelHandle
    from compress.methods import METHODS, StageContext
    from compress.methods.structured import StructuredConfig
    from compress.quant.serialize import read_tensors, save_compressed
    from compress.stream.model import StreamedModel
    from compress.stream.save import save

    _, folder, cal = gemma
    cfg = StructuredConfig(layers=0.25, mlp=0.25)
    h = models.load("gemma3-270m", dtype="float32")
    want = METHODS["structured"].apply(StageContext(model=h, calibration_loader=lambda: cal), cfg)
    save_compressed(h, tmp_path / "memory")

    sm = StreamedModel.open(folder).variant(tmp_path / "scratch")
    hs = ModelHandle(model=sm.model, tokenizer=h.tokenizer, source=h.source, dtype="float32",
                     device="cpu")  # fmt: skip
    got = METHODS["structured"].apply(StageContext(model=hs, calibration_loader=lambda: cal), cfg)
    assert sm.peak_blocks == 1
    save(sm, hs, tmp_path / "streamed")
    assert got.details["dropped_layers"] == want.details["dropped_layers"]
    assert len(want.details["dropped_layers"]) == 4  # a quarter of 18, rounded
    a, b = read_tensors(tmp_path / "memory"), read_tensors(tmp_path / "streamed")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    ca, cb = (
        json.loads((tmp_path / d / "config.json").read_text()) for d in ("memory", "streamed")
    )
    assert ca["layer_types"] == cb["layer_types"] and len(cb["layer_types"]) == 14
    assert cb["intermediate_size"] == ca["intermediate_size"] < 2048

"""compress.quant.serialize (+ quant.dynamic): the saved folder loads back to the same model."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from compress.methods import dynamic_int8, rtn, run_stage
from compress.profile.memory import weight_bytes
from compress.quant.dynamic import DynamicInt8Linear
from compress.quant.modules import Int4Linear, Int8Embedding, Int8Linear
from compress.quant.serialize import MANIFEST, load_compressed, save_compressed
from compress.testing import tiny_handle

IDS = torch.tensor([[1, 40, 41, 50, 60, 70, 5, 6, 90, 100, 11, 12], [1] + list(range(20, 31))])

CASES = {
    "int4_g32_asym+int8_head": [
        (run_stage, rtn.RTNConfig(bits=4, group_size=32, symmetric=False)),
        (run_stage, rtn.RTNConfig(bits=8, targets=["lm_head"], ignore=[])),
    ],
    "int4_g64_all_untied": [
        (run_stage, rtn.RTNConfig(bits=4, group_size=64, symmetric=True, ignore=[]))
    ],
    "int8_all": [(run_stage, rtn.RTNConfig(bits=8, ignore=[]))],
    "dynamic_int8": [(run_stage, dynamic_int8.DynamicInt8Config())],
    "dynamic_int8_all": [(run_stage, dynamic_int8.DynamicInt8Config(ignore=[]))],
}


def _compressed(case: str, **overrides):
    h = tiny_handle(**overrides)
    for fn, cfg in CASES[case]:
        h.stages.append(fn(h, cfg).model_dump(mode="json"))
    return h


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _kinds(model) -> dict[str, type]:
    return {n: type(m) for n, m in model.named_modules() if getattr(m, "kind", None)}


@pytest.fixture(scope="module")
def fp32_bytes() -> int:
    return weight_bytes(tiny_handle().model)


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_logits_exact(case, tmp_path, fp32_bytes):
    h = _compressed(case)
    before = _logits(h.model)
    out = save_compressed(h, tmp_path / "model-out")
    assert out == tmp_path / "model-out"
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", MANIFEST} <= names
    assert not [n for n in names if n.startswith(".")]
    assert os.listdir(tmp_path) == ["model-out"]  # no temp folder left beside it

    h2 = load_compressed(out)
    after = _logits(h2.model)
    assert after.dtype == before.dtype
    assert torch.equal(after, before)
    assert _kinds(h2.model) == _kinds(h.model)
    assert h2.dtype == h.dtype
    assert [s["method"] for s in h2.stages] == [s["method"] for s in h.stages]
    assert h2.source.kind == "compressed"

    # safetensors only (no pickle) and far smaller than the float32 model
    tensors = load_file(str(out / "model.safetensors"))
    assert tensors and all(isinstance(t, torch.Tensor) for t in tensors.values())
    size = (out / "model.safetensors").stat().st_size
    assert size < 0.45 * fp32_bytes, (size, fp32_bytes)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == "compress"
    assert set(manifest["modules"]) == set(_kinds(h.model))


def test_int4_case_stores_packed_codes_and_shared_embedding(tmp_path, fp32_bytes):
    h = _compressed("int4_g32_asym+int8_head")
    out = save_compressed(h, tmp_path / "m")
    tensors = load_file(str(out / "model.safetensors"))
    q = tensors["model.layers.0.mlp.up_proj.qweight_packed"]
    assert q.dtype == torch.uint8 and q.shape == (128, 32)  # [out, in/2]
    assert tensors["lm_head.qweight"].dtype == torch.int8
    # the tied embedding is stored once (inside the int8 lm_head), not as a float matrix
    assert not any(k.startswith("model.embed_tokens") for k in tensors)
    spec = json.loads((out / MANIFEST).read_text())["modules"]["model.embed_tokens"]
    assert spec == {"kind": "int8_embedding", "shares": "lm_head", "embed_scale": None}
    assert (out / "model.safetensors").stat().st_size < 0.3 * fp32_bytes

    h2 = load_compressed(out)
    emb, head = h2.model.model.embed_tokens, h2.model.lm_head
    assert isinstance(emb, Int8Embedding) and isinstance(head, Int8Linear)
    assert emb.weight_source is head
    assert isinstance(h2.model.model.layers[1].self_attn.q_proj, Int4Linear)
    assert torch.equal(
        h2.model.model.layers[1].self_attn.q_proj.codes(),
        h.model.model.layers[1].self_attn.q_proj.codes(),
    )


def test_dynamic_modules_reload_as_dynamic(tmp_path):
    h = _compressed("dynamic_int8")
    out = save_compressed(h, tmp_path / "d")
    h2 = load_compressed(out)
    assert isinstance(h2.model.model.layers[0].mlp.down_proj, DynamicInt8Linear)
    assert isinstance(h2.model.lm_head, torch.nn.Linear)  # ignored by default


def test_existing_folder_is_never_overwritten(tmp_path):
    h = _compressed("int8_all")
    target = tmp_path / "exists"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        save_compressed(h, target)
    assert os.listdir(target) == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["exists"]


def test_failed_save_leaves_no_temp_folder(tmp_path, monkeypatch):
    import compress.quant.serialize as ser

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ser, "save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_compressed(_compressed("int8_all"), tmp_path / "x")
    assert os.listdir(tmp_path) == []


def test_round_trip_keeps_linear_biases(tmp_path):
    h = tiny_handle(attention_bias=True)
    with torch.no_grad():
        for layer in h.model.model.layers:
            layer.self_attn.q_proj.bias.normal_(0, 0.5)
    run_stage(h, rtn.RTNConfig(bits=8, ignore=[]))
    before = _logits(h.model)
    h2 = load_compressed(save_compressed(h, tmp_path / "b"))
    assert torch.equal(
        h2.model.model.layers[0].self_attn.q_proj.bias,
        h.model.model.layers[0].self_attn.q_proj.bias,
    )
    assert torch.equal(_logits(h2.model), before)

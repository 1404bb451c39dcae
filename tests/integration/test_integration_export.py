"""Exports of the real SmolLM2 (int4 RTN, symmetric, groups of 32 + int8 tied lm_head):
the GGUF runs in llama.cpp with the torch model's predictions, the compressed-tensors folder
loads in plain transformers with our logits. About a minute on 2 cores."""

from __future__ import annotations

import pytest
import torch

from compress.runtimes import llamacpp as rt

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from compress import models
    from compress.methods import rtn, run_stage
    from compress.quant.serialize import save_compressed

    h = models.load("smollm2-135m", dtype="float32")
    for cfg in (
        rtn.RTNConfig(bits=4, group_size=32, symmetric=True),
        rtn.RTNConfig(bits=8, targets=["lm_head"], ignore=[]),
    ):
        h.stages.append(run_stage(h, cfg).model_dump(mode="json"))
    ids = h.tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = h.model(ids).logits.float()
    folder = save_compressed(h, tmp_path_factory.mktemp("export") / "model")
    return {"folder": folder, "ids": ids, "logits": logits, "handle": h}


TEXT = (
    "The history of the river valley is written in its stones. Farmers came first, clearing "
    "the oak woods along the banks and building low houses of timber and clay. Later a market "
    "town grew around the ford, with a church, a mill and a bridge that was rebuilt three "
    "times after floods."
)


def test_gguf_runs_in_llamacpp_with_the_same_predictions(saved, tmp_path):
    from compress.export import export_folder
    from compress.testing import kl_per_token

    rec = export_folder(saved["folder"], "gguf", tmp_path / "m.gguf")
    assert rec["requantized"] == [] and rec["tensor_types"]["Q4_0"] == 210
    assert rec["tensor_types"]["Q8_0"] == 1  # the tied embedding / lm_head, stored once
    assert rec["max_abs_error"] == 0.0  # bf16 scales fit fp16 exactly: the same weights
    if not rt.available():
        pytest.skip(f"llama-cpp-python is not installed ({rt.INSTALL})")
    m = rt.LlamaCppCausalLM(tmp_path / "m.gguf", saved["handle"].model.config, n_ctx=512)
    got = m(saved["ids"]).logits
    m.close()
    ref = saved["logits"]
    # llama.cpp quantises activations to 8 bits in its Q4_0 / Q8_0 dot products
    assert kl_per_token(ref, got) < 0.02
    assert float((ref.argmax(-1) == got.argmax(-1)).float().mean()) > 0.9


def test_compressed_tensors_loads_in_plain_transformers_with_our_logits(saved, tmp_path):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    from compress.export import export_folder
    from compress.export.gguf_model import int4_grid
    from compress.testing import float32_reference, kl_per_token

    export_folder(saved["folder"], "compressed-tensors", tmp_path / "ct")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ct").eval()
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    mods = dict(plain.named_modules())
    for name, m in saved["handle"].model.named_modules():  # the export itself is exact
        if getattr(m, "kind", None) == "int4_linear":
            t = mods[name]  # transformers keeps the packed form and decompresses on the fly
            q = unpack_from_int32(t.weight_packed, 4, torch.Size(t.weight_shape.tolist()))
            w = q.float() * t.weight_scale.float().repeat_interleave(32, dim=1)
            assert torch.equal(w, int4_grid(m).dequantize()), name
    with torch.no_grad():
        got = plain(saved["ids"]).logits.float()
    # the logits differ by compute precision only: our int4 kernel takes bf16 activations,
    # transformers runs the decompressed float32 weights in float32 (measured KLD ~1e-3)
    assert kl_per_token(saved["logits"], got) < 5e-3
    # like for like (our model in float32 from its own codes): the bound
    with torch.no_grad():
        ours32 = float32_reference(saved["handle"].model)(saved["ids"]).logits.float()
    assert kl_per_token(ours32, got) < 1e-4

"""methods.llamacpp: a variant moves into llama.cpp (our weights as GGUF, the source file, or
llama.cpp's own quantiser), keeps answering like the torch model, saves and loads back."""

from __future__ import annotations

import gguf
import pytest
import torch

from compress.errors import BadInput
from compress.handle import ModelSource
from compress.methods import llamacpp, rtn, run_stage
from compress.quant.serialize import load_compressed, save_compressed
from compress.runtimes import llamacpp as rt
from compress.testing import kl_per_token, tiny_handle

pytestmark = pytest.mark.skipif(
    not rt.available(), reason=f"llama-cpp-python is not installed ({rt.INSTALL})"
)
IDS = torch.tensor([[1, 40, 41, 50, 60, 70, 5, 6, 90, 100, 11, 12]])


@pytest.fixture
def gguf_handle(tmp_path):
    """A tiny Llama that 'came from' a GGUF file: the float model written by our writer."""
    from compress.export.gguf_model import write_gguf

    meta = tmp_path / "meta.gguf"
    w = gguf.GGUFWriter(str(meta), "llama")
    w.add_tokenizer_model("none")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    h = tiny_handle()
    write_gguf(h.model, meta, tmp_path / "tiny-f32.gguf", float_type="f32")
    h.source = ModelSource(spec="tiny.gguf", kind="gguf", path=tmp_path, gguf_file="tiny-f32.gguf")
    return h


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits.float()


def test_int4_variant_runs_in_llamacpp_and_saves(tmp_path, gguf_handle):
    h = gguf_handle
    h.stages.append(run_stage(h, rtn.RTNConfig(bits=4, group_size=32)).model_dump(mode="json"))
    ref = _logits(h.model)
    rec = run_stage(h, llamacpp.LlamaCppConfig(n_ctx=256))
    h.stages.append(rec.model_dump(mode="json"))
    assert h.runtime == "llamacpp" and rec.details["runtime"] == "llama.cpp"
    assert rec.details["gguf"]["tensor_types"]["Q4_0"] == 14 and rec.saves_memory
    assert any("kept its integer codes" in n for n in rec.notes)
    assert kl_per_token(ref, _logits(h.model)) < 1e-3
    out = save_compressed(h, tmp_path / "saved")
    back = load_compressed(out)
    assert back.runtime == "llamacpp" and back.model.n_ctx == 256
    assert torch.allclose(_logits(back.model), _logits(h.model), atol=1e-5)
    back.model.close()
    h.model.close()


def test_source_file_and_llamas_own_quantiser(gguf_handle):
    h = gguf_handle
    ref = _logits(h.model)
    rec = run_stage(h, llamacpp.LlamaCppConfig(weights="source", quantize="Q8_0", n_ctx=256))
    assert any("llama_model_quantize to Q8_0" in n for n in rec.notes)
    assert kl_per_token(ref, _logits(h.model)) < 1e-3
    h.model.close()


def test_refusals_name_the_problem(gguf_handle):
    h = gguf_handle
    h.stages.append(run_stage(h, rtn.RTNConfig(bits=8)).model_dump(mode="json"))
    with pytest.raises(BadInput, match="ignores the earlier stages"):
        run_stage(h, llamacpp.LlamaCppConfig(weights="source"))
    plain = tiny_handle()
    with pytest.raises(BadInput, match="loaded from a .gguf"):
        run_stage(plain, llamacpp.LlamaCppConfig())

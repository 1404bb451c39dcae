"""compress.runtimes.llamacpp + methods.llamacpp on a tiny random Llama written as GGUF: the
logits llama.cpp computes are the torch model's (which checks the writer's tensor names,
row order and metadata end to end), the KV cache continues a sequence, and the saved folder
loads back. Skipped, with the reason, where llama-cpp-python is not installed."""

from __future__ import annotations

import gguf
import pytest
import torch

from compress.errors import BadInput
from compress.export.gguf_model import write_gguf
from compress.methods import rtn, run_stage
from compress.runtimes import llamacpp as rt
from compress.testing import kl_per_token, tiny_handle

pytestmark = pytest.mark.skipif(
    not rt.available(), reason=f"llama-cpp-python is not installed ({rt.INSTALL})"
)
IDS = torch.tensor([[1, 40, 41, 50, 60, 70, 5, 6, 90, 100, 11, 12, 33, 34, 35, 36]])


@pytest.fixture
def meta(tmp_path):
    path = tmp_path / "meta.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_tokenizer_model("none")  # no vocabulary: token ids go in directly
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _llama(handle, meta, tmp_path, float_type="f32"):
    path = tmp_path / "m.gguf"
    write_gguf(handle.model, meta, path, float_type=float_type)
    return rt.LlamaCppCausalLM(path, handle.model.config, n_ctx=256)


def test_float_model_gives_the_torch_logits(tmp_path, meta):
    h = tiny_handle()
    with torch.no_grad():
        ref = h.model(IDS).logits.float()
    m = _llama(h, meta, tmp_path)
    got = m(IDS).logits
    m.close()
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 1e-3 * float(ref.abs().max()) + 1e-4


def test_int4_model_matches_its_torch_self(tmp_path, meta):
    h = tiny_handle()
    h.stages.append(run_stage(h, rtn.RTNConfig(bits=4, group_size=32)).model_dump(mode="json"))
    with torch.no_grad():
        ref = h.model(IDS).logits.float()
    m = _llama(h, meta, tmp_path)
    got = m(IDS).logits
    m.close()
    # llama.cpp quantises activations to 8 bits for its Q4_0 dot products: close, not equal
    assert kl_per_token(ref, got) < 1e-3


def test_cache_continues_the_sequence_and_keep_limits_rows(tmp_path, meta):
    m = _llama(tiny_handle(), meta, tmp_path)
    full = m(IDS).logits
    out = m(IDS[:, :10], use_cache=True, logits_to_keep=1)
    assert out.logits.shape[1] == 1 and out.past_key_values.get_seq_length() == 10
    step = m(IDS[:, 10:11], past_key_values=out.past_key_values, use_cache=True)
    assert torch.allclose(step.logits[0, -1], full[0, 10], atol=1e-3)
    with pytest.raises(Exception, match="KV cache"):
        m(IDS[:, 11:12], past_key_values=out.past_key_values, use_cache=True)  # stale
    m.close()


def test_batches_without_cache_run_row_by_row_with_padding(tmp_path, meta):
    m = _llama(tiny_handle(), meta, tmp_path)
    a = m(IDS[:, :8]).logits[0]
    batch = torch.cat([IDS[:, :8], torch.cat([torch.full((1, 3), 3), IDS[:, :5]], 1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    out = m(batch, attention_mask=mask).logits
    assert torch.allclose(out[0], a, atol=1e-4)
    assert torch.allclose(out[1, 3:], m(IDS[:, :5]).logits[0], atol=1e-4)
    with pytest.raises(BadInput, match="batch 1"):
        m(batch, use_cache=True)
    m.close()


def test_context_overflow_is_a_clear_error(tmp_path, meta):
    m = _llama(tiny_handle(), meta, tmp_path)
    with pytest.raises(BadInput, match="n_ctx"):
        m(torch.ones(1, 300, dtype=torch.long))
    m.close()

"""compress.runtimes.onnxruntime: the float32 ONNX export run by ORT answers like the torch model
(prefill, decode with past, greedy ids, masks, no-cache graphs) and profiles unchanged."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from compress.profile.latency import profile_generation  # noqa: E402
from compress.profile.memory import weight_bytes  # noqa: E402
from compress.runtimes.onnx_export import export_onnx  # noqa: E402
from compress.runtimes.onnxruntime import OrtCache, OrtCausalLM, initializer_nbytes  # noqa: E402
from compress.testing import tiny_llama, tiny_tokenizer  # noqa: E402

ATOL = 1e-4  # float32 ORT vs float32 torch; measured max abs diff ~2.4e-7
IDS = torch.tensor([[1, 40, 41, 50, 60, 70, 5, 6, 90, 100, 11, 12], [1] + list(range(20, 31))])


@pytest.fixture(scope="module")
def torch_model():
    return tiny_llama(initializer_range=0.1)  # spread logits: no near-ties in greedy ids


@pytest.fixture(scope="module")
def fp32_proto(torch_model):
    return export_onnx(torch_model)


@pytest.fixture(scope="module")
def ort_model(torch_model, fp32_proto):
    return OrtCausalLM(fp32_proto.SerializeToString(), torch_model.config)


def _greedy_torch(model, ids: torch.Tensor, n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
        )
    return out[0, ids.shape[1] :].tolist()


def _greedy_ort(model, ids: torch.Tensor, n: int) -> list[int]:
    out = model(ids, use_cache=True, logits_to_keep=1)
    got = []
    for _ in range(n):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        got.append(int(nxt))
        out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
    return got


def test_prefill_logits_match_torch(torch_model, ort_model):
    with torch.no_grad():
        ref = torch_model(IDS).logits
    out = ort_model(IDS)
    assert out.logits.dtype == torch.float32
    assert out.logits.shape == ref.shape
    assert (out.logits - ref).abs().max() < ATOL
    assert out.past_key_values is None  # use_cache=False


def test_decode_step_with_past_matches_torch_dynamic_cache(torch_model, ort_model):
    with torch.no_grad():
        ref = torch_model(IDS, use_cache=True)
        nxt = ref.logits[:, -1:].argmax(-1)
        ref2 = torch_model(nxt, past_key_values=ref.past_key_values, use_cache=True)
    out = ort_model(IDS, use_cache=True)
    assert isinstance(out.past_key_values, OrtCache)
    assert out.past_key_values.get_seq_length() == IDS.shape[1]
    out2 = ort_model(nxt, past_key_values=out.past_key_values, use_cache=True)
    assert out2.logits.shape == ref2.logits.shape == (2, 1, 128)
    assert (out2.logits - ref2.logits).abs().max() < ATOL
    assert out2.past_key_values.get_seq_length() == IDS.shape[1] + 1


def test_logits_to_keep_and_explicit_mask(torch_model, ort_model):
    with torch.no_grad():
        ref = torch_model(IDS).logits
    mask = torch.ones_like(IDS)
    out = ort_model(input_ids=IDS, attention_mask=mask, use_cache=True, logits_to_keep=1)
    assert out.logits.shape == (2, 1, 128)
    assert (out.logits[:, 0] - ref[:, -1]).abs().max() < ATOL


def test_left_padding_mask_matches_torch(torch_model, ort_model):
    mask = torch.ones_like(IDS)
    mask[1, :3] = 0
    with torch.no_grad():
        ref = torch_model(IDS, attention_mask=mask).logits
    out = ort_model(IDS, attention_mask=mask)
    assert (out.logits[1, 3:] - ref[1, 3:]).abs().max() < ATOL
    assert (out.logits[0] - ref[0]).abs().max() < ATOL


def test_greedy_decode_8_tokens_equals_torch(torch_model, ort_model):
    ids = IDS[:1, :6]
    assert _greedy_ort(ort_model, ids, 8) == _greedy_torch(torch_model, ids, 8)


def test_wrapper_holds_no_torch_weights(torch_model, fp32_proto, ort_model):
    assert isinstance(ort_model, torch.nn.Module)
    assert list(ort_model.parameters()) == [] and list(ort_model.buffers()) == []
    assert ort_model.weight_nbytes() == initializer_nbytes(fp32_proto)
    assert weight_bytes(ort_model) == ort_model.weight_nbytes()
    # the tied embedding is stored once, as in torch (rotary inv_freq etc. differ slightly)
    assert ort_model.weight_nbytes() <= weight_bytes(torch_model)
    assert ort_model.config.max_position_embeddings == 256
    assert ort_model.device == torch.device("cpu")
    assert ort_model.kv_cache and ort_model.num_layers == 2
    assert ort_model.runtime.startswith("onnxruntime ") and "CPUExecutionProvider" in (
        ort_model.runtime
    )


def test_session_follows_torch_threads(ort_model):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert ort_model(IDS[:, :4]).logits.shape == (2, 4, 128)
        assert ort_model._threads == 1
    finally:
        torch.set_num_threads(before)


def test_profile_generation_runs_on_wrapper(torch_model, ort_model):
    kw = dict(prompt_tokens=16, new_tokens=4, warmup=1, repeats=2, device="cpu", progress=False)
    res = profile_generation(ort_model, tiny_tokenizer(), **kw)
    names = {m["name"] for m in res["measurements"]}
    assert {"prefill.latency_ms", "decode.tokens_per_s", "memory.peak_rss_bytes"} <= names
    ref = profile_generation(torch_model, tiny_tokenizer(), **kw)
    assert res["greedy_ids"] == ref["greedy_ids"]


def test_graph_without_kv_cache_reruns_prefix(torch_model):
    proto = export_onnx(torch_model, kv_cache=False)
    model = OrtCausalLM(proto.SerializeToString(), torch_model.config)
    assert not model.kv_cache
    with torch.no_grad():
        ref = torch_model(IDS).logits
    out = model(IDS[:, :-1], use_cache=True)
    assert (out.logits - ref[:, :-1]).abs().max() < ATOL
    step = model(IDS[:, -1:], past_key_values=out.past_key_values, use_cache=True)
    assert step.logits.shape == (2, 1, 128)
    assert (step.logits[:, 0] - ref[:, -1]).abs().max() < ATOL
    ids = IDS[:1, :6]
    assert _greedy_ort(model, ids, 8) == _greedy_torch(torch_model, ids, 8)


def test_foreign_cache_is_refused(ort_model):
    from transformers import DynamicCache

    with pytest.raises(TypeError, match="OrtCache"):
        ort_model(IDS, past_key_values=DynamicCache(), use_cache=True)

"""compress.export.gguf_model: a compressed tiny Llama written as GGUF reads back, through
gguf's own reader and dequantiser, as the weights the model computes with."""

from __future__ import annotations

import json

import gguf
import pytest
import torch

from compress.errors import ExportError
from compress.export import gguf_blocks as gb
from compress.export.gguf_model import llama_row_order, model_tensors, write_gguf
from compress.methods import bnb, rtn, run_stage, structured
from compress.testing import tiny_calibration, tiny_handle


@pytest.fixture
def meta(tmp_path):
    """A stand-in for the source GGUF: tokenizer and model metadata only."""
    path = tmp_path / "source.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_block_count(99)  # stale on purpose: the writer must take shapes from the config
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(128)])
    w.add_context_length(256)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _stage(h, cfg):
    h.stages.append(run_stage(h, cfg).model_dump(mode="json"))


def _effective(value):
    return value.dequantize() if isinstance(value, gb.Grid) else value.float()


def _read(path):
    r = gguf.GGUFReader(str(path))
    tensors = {}
    for t in r.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = (t.tensor_type, torch.from_numpy(data.copy()).float())
    return r, tensors


def test_int4_model_reads_back_as_its_own_weights(tmp_path, meta):
    h = tiny_handle()
    _stage(h, rtn.RTNConfig(bits=4, group_size=32, symmetric=True))
    _stage(h, rtn.RTNConfig(bits=8, targets=["lm_head"], ignore=[]))
    out = tmp_path / "m.gguf"
    rec = write_gguf(h.model, meta, out, provenance={"stages": ["rtn"]})
    assert out.is_file() and rec["file_bytes"] == out.stat().st_size
    assert rec["requantized"] == []
    reader, tensors = _read(out)
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert tensors["token_embd.weight"][0] == gguf.GGMLQuantizationType.Q8_0
    assert tensors["blk.0.attn_q.weight"][0] == gguf.GGMLQuantizationType.Q4_0
    assert tensors["blk.1.ffn_down.weight"][0] == gguf.GGMLQuantizationType.Q4_0
    cfg = h.model.config
    ours = model_tensors(h.model)
    q = _effective(ours["model.layers.0.self_attn.q_proj.weight"])
    k = _effective(ours["model.layers.1.self_attn.k_proj.weight"])
    down = _effective(ours["model.layers.1.mlp.down_proj.weight"])
    q_order = llama_row_order(q.shape[0], cfg.num_attention_heads)
    k_order = llama_row_order(k.shape[0], cfg.num_key_value_heads)
    for name, want in [
        ("blk.0.attn_q.weight", q[q_order]),
        ("blk.1.attn_k.weight", k[k_order]),
        ("blk.1.ffn_down.weight", down),
    ]:
        got = tensors[name][1].reshape(want.shape)
        assert torch.allclose(got, want, atol=2e-3 * float(want.abs().max())), name
    norm = tensors["blk.0.attn_norm.weight"][1]
    assert torch.equal(norm, h.model.model.layers[0].input_layernorm.weight.detach())
    fields = reader.fields
    assert fields["llama.block_count"].contents() == 2  # from the config, not the stale 99
    assert fields["general.name"].contents() == "tiny"
    assert fields["tokenizer.ggml.tokens"].contents()[:2] == ["t0", "t1"]
    assert json.loads(fields["compress.provenance"].contents()) == {"stages": ["rtn"]}
    assert not list(tmp_path.glob(".*partial"))


def test_structured_pruning_rewrites_the_shape_metadata(tmp_path, meta):
    h = tiny_handle()
    cfg = structured.StructuredConfig(layers=[1], mlp=0.25, mlp_multiple=32, samples=4)
    h.stages.append(run_stage(h, cfg, tiny_calibration(samples=4)).model_dump(mode="json"))
    out = tmp_path / "s.gguf"
    write_gguf(h.model, meta, out, float_type="f32")
    reader, tensors = _read(out)
    assert reader.fields["llama.block_count"].contents() == 1
    assert reader.fields["llama.feed_forward_length"].contents() == 96
    assert tensors["blk.0.ffn_up.weight"][0] == gguf.GGMLQuantizationType.F32
    assert "blk.1.ffn_up.weight" not in tensors


def test_formats_without_a_mapping_are_refused_by_name(tmp_path, meta):
    pytest.importorskip("bitsandbytes")
    h = tiny_handle()
    _stage(h, bnb.BnbConfig(quant_type="nf4"))
    with pytest.raises(ExportError, match="bnb_linear.*GGUF export supports"):
        write_gguf(h.model, meta, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_unknown_architectures_are_refused(tmp_path, meta):
    h = tiny_handle()
    h.model.config.model_type = "mystery"
    with pytest.raises(ExportError, match="architectures"):
        write_gguf(h.model, meta, tmp_path / "x.gguf")

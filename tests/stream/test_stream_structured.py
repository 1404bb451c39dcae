"""Structured pruning on a model streamed from disk: the same scores, the same slices and the
same dropped layers as in memory (bit-identical weights, the same record), one layer held at a
time; dropped layers renumber the streamed blocks, each kept layer read from where it was; the
result saves as a folder plain transformers reloads, and quantization composes after it."""

from __future__ import annotations

import pytest
import torch

from compress.handle import ModelHandle, ModelSource
from compress.methods import METHODS, StageContext
from compress.methods.gptq import GPTQConfig
from compress.methods.structured import StructuredConfig
from compress.quant.serialize import read_tensors, save_compressed
from compress.stream.model import StreamedModel
from compress.stream.save import save
from compress.testing import tiny_calibration, tiny_llama, tiny_tokenizer

LAYERS = 5
CONFIGS = {
    "depth-fraction": StructuredConfig(layers=0.4),  # 2 of the 3 unprotected layers
    "depth-list": StructuredConfig(layers=[1, 3]),
    "mlp": StructuredConfig(mlp=0.25),
    "heads": StructuredConfig(heads=0.5),
    "all": StructuredConfig(layers=[0, 2], mlp=0.25, heads=0.5),
}


def model(seed: int = 0):
    return tiny_llama(seed, num_hidden_layers=LAYERS, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny"
    model().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def handle(m, path) -> ModelHandle:
    src = ModelSource(spec=str(path), kind="local_dir", path=path)
    return ModelHandle(model=m, tokenizer=tiny_tokenizer(), source=src, dtype="float32",
                       device="cpu")  # fmt: skip


def run(cfg, h: ModelHandle):
    cal = tiny_calibration()
    return METHODS[cfg.method].apply(StageContext(model=h, calibration_loader=lambda: cal), cfg)


def comparable(record) -> dict:
    d = record.model_dump(mode="json")
    d["details"] = {k: v for k, v in d["details"].items() if "seconds" not in k}
    return {k: v for k, v in d.items() if "seconds" not in k}


def both(cfgs, base_dir, tmp_path):
    """Run `cfgs` in memory and streamed; save both; (records in memory, streamed, sm)."""
    mem = handle(model(), base_dir)
    want = [run(c, mem) for c in cfgs]
    save_compressed(mem, tmp_path / "mem")
    sm = StreamedModel.open(base_dir).variant(tmp_path / "scratch")
    st = handle(sm.model, base_dir)
    got = [run(c, st) for c in cfgs]
    save(sm, st, tmp_path / "stream")
    return mem, want, got, sm


def assert_same_weights(tmp_path) -> None:
    a, b = read_tensors(tmp_path / "mem"), read_tensors(tmp_path / "stream")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("which", list(CONFIGS))
def test_streamed_structured_writes_what_memory_writes(which, base_dir, tmp_path):
    mem, want, got, sm = both([CONFIGS[which]], base_dir, tmp_path)
    assert comparable(got[0]) == comparable(want[0])
    assert_same_weights(tmp_path)
    assert sm.peak_blocks == 1
    d = got[0].details
    if "layers" in CONFIGS[which].model_fields_set:
        assert d["shape_after"]["layers"] == LAYERS - 2
        assert sm.layer_names == [f"model.layers.{i}" for i in range(LAYERS - 2)]
    ids = tiny_calibration(samples=2).input_ids
    with torch.no_grad():
        want_logits = mem.model(ids).logits
        assert torch.equal(sm.model(ids).logits, want_logits)  # before saving, streamed
        reloaded = StreamedModel.open_compressed(tmp_path / "stream").model
        assert torch.equal(reloaded(ids).logits, want_logits)
    from transformers import AutoModelForCausalLM  # plain transformers reads the folder

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "stream").eval()
    assert plain.config.num_hidden_layers == d["shape_after"]["layers"]
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, want_logits)


def test_dropped_layers_leave_no_scratch_and_kept_layers_read_their_old_files(base_dir, tmp_path):
    sm = StreamedModel.open(base_dir).variant(tmp_path / "scratch")
    run(CONFIGS["all"], handle(sm.model, base_dir))
    folders = sorted(p.name for p in (tmp_path / "scratch").iterdir())
    # width slicing wrote every layer once; the two dropped layers' folders are gone
    assert len(folders) == LAYERS - 2
    kept = [1, 3, 4]
    for new, old in enumerate(kept):
        src = sm.sources[f"model.layers.{new}"]
        assert src.prefix == f"model.layers.{old}"
        assert src.files.folder.name.startswith(f"model.layers.{old}.")


def test_structured_then_gptq_streamed_is_bit_identical(base_dir, tmp_path):
    cfgs = [CONFIGS["all"], GPTQConfig(bits=4, group_size=32)]
    _, want, got, sm = both(cfgs, base_dir, tmp_path)
    assert_same_weights(tmp_path)
    assert [comparable(g) for g in got] == [comparable(w) for w in want]
    assert sm.peak_blocks == 1
    # gptq rewrote every kept layer: one folder per layer, the renumbered names now
    folders = sorted(p.name.rsplit(".", 1)[0] for p in (tmp_path / "scratch").iterdir())
    assert folders == [f"model.layers.{i}" for i in range(LAYERS - 2)]
    assert all(s.prefix is None for n, s in sm.sources.items() if n.startswith("model.layers"))


def test_renumber_refuses_a_filled_block_and_a_wrong_count(base_dir, tmp_path):
    sm = StreamedModel.open(base_dir).variant(tmp_path / "scratch")
    sm.hold("model.layers.0")
    with pytest.raises(RuntimeError, match="filled"):
        sm.renumber([0, 1])
    sm.release("model.layers.0")
    with pytest.raises(ValueError, match="5 layers in the model, 2 kept"):
        sm.renumber([0, 1])

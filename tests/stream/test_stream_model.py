"""A model streamed from disk block by block computes what the model in memory computes, and
GPTQ through the shared calibration loop writes bit-identical weights from it."""

from __future__ import annotations

import pytest
import torch

from compress.handle import ModelHandle, ModelSource
from compress.methods import METHODS, StageContext
from compress.methods.gptq import GPTQConfig
from compress.profile.memory import weight_bytes
from compress.quant.serialize import load_compressed, read_tensors, save_compressed
from compress.stream.model import StreamedModel, of
from compress.stream.save import save
from compress.testing import tiny_calibration, tiny_llama, tiny_tokenizer

CFG = GPTQConfig(bits=4, group_size=32)


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def base_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny"
    tiny_llama(0, tie_word_embeddings=request.param).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path, request.param


def handle(model, path) -> ModelHandle:
    src = ModelSource(spec=str(path), kind="local_dir", path=path)
    return ModelHandle(model=model, tokenizer=tiny_tokenizer(), source=src, dtype="float32",
                       device="cpu")  # fmt: skip


def gptq(h: ModelHandle) -> None:
    cal = tiny_calibration()
    METHODS["gptq"].apply(StageContext(model=h, calibration_loader=lambda: cal), CFG)


@pytest.fixture(scope="module")
def both(base_dir, tmp_path_factory):
    """GPTQ in memory and streamed, each saved: (in-memory folder, streamed folder, variant)."""
    path, tied = base_dir
    root = tmp_path_factory.mktemp("out")
    mem = handle(tiny_llama(0, tie_word_embeddings=tied), path)
    gptq(mem)
    save_compressed(mem, root / "mem")
    sm = StreamedModel.open(path).variant(root / "scratch")
    st = handle(sm.model, path)
    gptq(st)
    save(sm, st, root / "stream")
    return root / "mem", root / "stream", sm


def test_forward_matches_in_memory_one_block_at_a_time(base_dir):
    path, tied = base_dir
    sm = StreamedModel.open(path)
    ids = tiny_calibration(samples=2).input_ids
    with torch.no_grad():
        want = tiny_llama(0, tie_word_embeddings=tied)(ids).logits
        got = sm.model(ids).logits
    assert torch.equal(want, got)
    assert sm.peak_blocks == 1 and not sm.resident  # each block emptied after its forward
    assert all(p.device.type == "meta" for n, p in sm.model.named_parameters() if "layers" in n)


def test_streamed_gptq_writes_identical_weights(both):
    mem, stream, sm = both
    a, b = read_tensors(mem), read_tensors(stream)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sm.peak_blocks == 1  # the loop held one layer at a time
    assert (stream / "model.safetensors.index.json").is_file()


def test_saved_folder_reloads_in_memory_and_streamed(both):
    mem, stream, _ = both
    ids = tiny_calibration(samples=2).input_ids
    reloaded = StreamedModel.open_compressed(stream)
    with torch.no_grad():
        want = load_compressed(mem).model(ids).logits
        sharded = load_compressed(stream).model(ids).logits  # the sharded folder, in memory
        streamed = reloaded.model(ids).logits
    assert torch.equal(want, sharded) and torch.equal(want, streamed)
    assert weight_bytes(reloaded.model) == weight_bytes(load_compressed(mem).model)


def test_weight_bytes_measured_block_by_block(base_dir):
    path, tied = base_dir
    sm = StreamedModel.open(path)
    assert weight_bytes(sm.model) == weight_bytes(tiny_llama(0, tie_word_embeddings=tied))
    assert not sm.resident


def test_save_never_overwrites(both, tmp_path):
    _, stream, _ = both
    sm = StreamedModel.open_compressed(stream)
    with pytest.raises(FileExistsError):
        save(sm, handle(sm.model, stream), stream)


def test_commit_needs_a_variant(base_dir):
    sm = StreamedModel.open(base_dir[0])
    sm.hold("model.layers.0")
    with pytest.raises(RuntimeError, match="variant"):
        sm.commit("model.layers.0")
    sm.release("model.layers.0")
    assert not sm.resident and of(sm.model) is sm

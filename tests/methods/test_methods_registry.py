"""The stage contract: methods register themselves, the recipe's config union is built from the
registry, a StageRecord is typed, the context loads data lazily."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import TypeAdapter, ValidationError

from compress._config import StageBase
from compress.errors import BadInput
from compress.methods import (
    METHODS,
    SUPPORT,
    StageConfig,
    StageContext,
    StageRecord,
    config_class,
    run_stage,
)
from compress.methods.registry import method_tag, register
from compress.methods.rtn import RTNConfig
from compress.testing import tiny_handle

SHIPPED = {
    "awq",
    "cast",
    "distill",
    "structured",
    "bnb",
    "dynamic_int8",
    "gptq",
    "llamacpp",
    "magnitude",
    "onnx_int8",
    "rtn",
    "smoothquant",
    "sparsegpt",
    "wanda",
}


def test_every_method_module_registered_itself():
    assert set(METHODS) == SHIPPED
    for name, m in METHODS.items():
        assert m.name == name == method_tag(m.config)
        assert m.apply.__module__ == f"compress.methods.{name}"
        assert config_class(name) is m.config
    assert not SUPPORT & set(METHODS)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_config_union_is_built_from_the_registry(name):
    extra = {
        "rtn": {"bits": 4, "group_size": 32},
        "gptq": {"bits": 4, "group_size": 32},
        "distill": {"steps": 10},  # a budget is required
        "structured": {"layers": 0.25},  # so is something to remove
    }.get(name, {})
    cfg = TypeAdapter(StageConfig).validate_python({"method": name, **extra})
    assert isinstance(cfg, METHODS[name].config)


def test_unknown_method_is_refused_by_the_union():
    with pytest.raises(ValidationError, match="gptqq"):
        TypeAdapter(StageConfig).validate_python({"method": "gptqq"})


def test_registering_a_second_method_under_a_taken_name_fails():
    class Clash(StageBase):
        method: Literal["rtn"] = "rtn"

    with pytest.raises(ValueError, match="registered twice"):
        register(Clash)(lambda ctx, cfg: StageRecord(method="rtn"))
    assert METHODS["rtn"].config is RTNConfig  # the real one is untouched


def test_a_config_without_a_method_tag_cannot_register():
    class NoTag(StageBase):
        pass

    with pytest.raises(TypeError, match="method"):
        register(NoTag)


def test_stage_record_is_typed_and_extras_go_to_details():
    rec = StageRecord.make(method="x", kernel="k", notes=["n"], layers=3, details={"a": 1})
    assert (rec.kernel, rec.notes, rec.details) == ("k", ["n"], {"a": 1, "layers": 3})
    with pytest.raises(ValidationError, match="extra"):
        StageRecord(method="x", layers=3)
    m = rec.measured(100, 40)
    assert (m.bytes_before, m.bytes_after, m.saves_memory) == (100, 40, True)
    assert rec.measured(100, 100).saves_memory is False


def test_context_loads_calibration_once_and_only_when_asked():
    calls = []
    ctx = StageContext(model=None, calibration_loader=lambda: calls.append(1) or "calib")
    assert calls == []
    assert ctx.calibration() == ctx.calibration() == "calib" and calls == [1]
    assert StageContext(model=None).calibration() is None


def test_training_data_without_a_source_is_bad_input_naming_the_fix():
    with pytest.raises(BadInput, match="training data") as e:
        StageContext(model=None).training_data()
    assert "training:" in str(e.value.fix)


def test_run_stage_passes_the_baseline_and_returns_a_record():
    seen = {}

    def probe(ctx: StageContext, cfg) -> StageRecord:
        seen.update(model=ctx.model, baseline=ctx.baseline, calib=ctx.calibration())
        ctx.report_progress("probe", 1, 1)
        return StageRecord(method=cfg.method)

    student, teacher = tiny_handle(), tiny_handle()
    real = METHODS["rtn"]
    METHODS["rtn"] = type(real)("rtn", RTNConfig, probe)
    try:
        ticks = []
        rec = run_stage(
            student,
            RTNConfig(bits=8),
            "calib",
            baseline=teacher,
            progress=lambda *a: ticks.append(a),
        )
    finally:
        METHODS["rtn"] = real
    assert rec == StageRecord(method="rtn")
    assert seen == {"model": student, "baseline": teacher, "calib": "calib"}
    assert ticks == [("probe", 1, 1)]


def test_real_stage_through_the_contract_records_what_it_did():
    h = tiny_handle()
    rec = run_stage(h, RTNConfig(bits=8, ignore=[]))
    assert isinstance(rec, StageRecord) and rec.method == "rtn"
    assert rec.kernel and rec.compute_dtype == "bfloat16" and rec.seconds > 0
    assert rec.details["layers"] > 0


def test_cast_is_a_dtype_change_and_nothing_else(tmp_path):
    import torch

    from compress.methods.cast import CastConfig
    from compress.quant.serialize import load_compressed, save_compressed

    h = tiny_handle()
    ids = torch.randint(4, 100, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = h.model(ids).logits.float()
    rec = run_stage(h, CastConfig(dtype="bfloat16"))
    assert rec.method == "cast" and rec.compute_dtype == "bfloat16" and h.dtype == "bfloat16"
    assert {p.dtype for p in h.model.parameters()} == {torch.bfloat16}
    assert not [m for m in h.model.modules() if getattr(m, "kind", None)]
    with torch.no_grad():
        out = h.model(ids).logits.float()
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()  # bf16 rounding, not a new model
    h.stages.append(rec.model_dump(mode="json"))
    h2 = load_compressed(save_compressed(h, tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(h2.model(ids).logits.float(), out)

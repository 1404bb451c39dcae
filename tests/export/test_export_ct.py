"""compress.export.ct: compressed-tensors folders that plain transformers loads, with our
logits; grids without an exact form are refused with the reason."""

from __future__ import annotations

import json

import pytest
import torch

from compress.errors import ExportError
from compress.export.ct import write_compressed_tensors
from compress.methods import gptq, rtn, run_stage
from compress.testing import kl_per_token, tiny_calibration, tiny_handle

pytest.importorskip("compressed_tensors")
IDS = torch.tensor([[1, 40, 41, 50, 60, 70, 5, 6, 90, 100, 11, 12]])


def _stage(h, cfg, calib=None):
    h.stages.append(run_stage(h, cfg, calib).model_dump(mode="json"))


def _load_plain(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.mark.parametrize("bits", [4, 3])
def test_symmetric_int4_and_int8_head_load_in_plain_transformers(tmp_path, bits):
    h = tiny_handle()
    _stage(h, gptq.GPTQConfig(bits=bits, group_size=32, symmetric=True), tiny_calibration(8))
    _stage(h, rtn.RTNConfig(bits=8, targets=["lm_head"], ignore=[]))
    rec = write_compressed_tensors(h, tmp_path / "ct")
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "pack-quantized" and qc["quant_method"] == "compressed-tensors"
    (group,) = qc["config_groups"].values()
    assert group["weights"]["num_bits"] == 4 and group["weights"]["group_size"] == 32
    assert group["weights"]["symmetric"] is True  # 3-bit codes: their zero folded in exactly
    assert rec["ignored"] == ["lm_head"]  # tied: the embedding's float table serves both
    plain = _load_plain(tmp_path / "ct")
    with torch.no_grad():
        ours, theirs = h.model(IDS).logits.float(), plain(IDS).logits.float()
    assert kl_per_token(ours, theirs) < 1e-4


def test_int8_weight_only_channels(tmp_path):
    h = tiny_handle()
    _stage(h, rtn.RTNConfig(bits=8))
    write_compressed_tensors(h, tmp_path / "ct")
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    (group,) = qc["config_groups"].values()
    assert group["weights"]["strategy"] == "channel" and group["weights"]["num_bits"] == 8
    with torch.no_grad():
        ours = h.model(IDS).logits.float()
        theirs = _load_plain(tmp_path / "ct")(IDS).logits.float()
    assert kl_per_token(ours, theirs) < 1e-4


def test_min_max_grids_with_a_float_zero_are_refused(tmp_path):
    h = tiny_handle()
    _stage(h, rtn.RTNConfig(bits=4, group_size=32, symmetric=False))
    with pytest.raises(ExportError, match="free float zero.*symmetric: true"):
        write_compressed_tensors(h, tmp_path / "ct")
    assert not (tmp_path / "ct").exists() and not list(tmp_path.iterdir())


def test_a_float_model_has_nothing_to_write(tmp_path):
    with pytest.raises(ExportError, match="no int4/int8"):
        write_compressed_tensors(tiny_handle(), tmp_path / "ct")


def test_w8a8_dynamic_int8_is_int_quantized_with_its_activation_scheme(tmp_path):
    from compress.methods import dynamic_int8

    h = tiny_handle()
    _stage(h, dynamic_int8.DynamicInt8Config())
    rec = write_compressed_tensors(h, tmp_path / "ct")
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "int-quantized"
    (group,) = qc["config_groups"].values()
    acts = group["input_activations"]
    assert acts["dynamic"] is True and acts["strategy"] == "tensor" and not acts["symmetric"]
    assert list(rec["schemes"]) == ["8-bit channel sym + int8 activations per tensor"]
    with torch.no_grad():
        ours = h.model(IDS).logits.float()
        theirs = _load_plain(tmp_path / "ct")(IDS).logits.float()
    # both quantize activations per tensor at run time (fbgemm's rounding vs a fake-quant)
    assert kl_per_token(ours, theirs) < 1e-3


def test_weight_only_and_w8a8_layers_cannot_share_one_folder(tmp_path):
    from compress.methods import dynamic_int8

    h = tiny_handle()
    _stage(h, rtn.RTNConfig(bits=4, group_size=32, targets=["re:.*mlp.*"]))
    _stage(h, dynamic_int8.DynamicInt8Config(targets=["re:.*self_attn.*"]))
    with pytest.raises(ExportError, match="not both"):
        write_compressed_tensors(h, tmp_path / "ct")

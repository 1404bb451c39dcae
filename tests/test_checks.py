"""compress.checks: the NaN/inf probe run after every compression stage."""

from __future__ import annotations

import pytest
import torch

from compress.checks import PROBE_TEXT, PROBE_TOKENS, check_finite_output, probe_ids, probe_output
from compress.errors import ReleaseFailed
from compress.methods import run_stage
from compress.testing import tiny_handle


def test_probe_ids_from_tokenizer_or_a_fixed_range():
    handle = tiny_handle()
    ids = probe_ids(handle.tokenizer, 128)
    assert len(ids) == PROBE_TOKENS and all(0 <= i < 128 for i in ids)
    assert ids == handle.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"][:8]
    assert probe_ids(None) == list(range(PROBE_TOKENS))
    assert probe_ids(None, vocab_size=5) == [0, 1, 2, 3, 4, 0, 1, 2]


def test_finite_model_passes_and_probe_shape():
    handle = tiny_handle()
    out = probe_output(handle)
    assert out.shape == (1, PROBE_TOKENS, 128)
    check_finite_output(handle, stage="compress: stages.0 (rtn)")  # no error


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_a_failed_release_naming_the_stage(value):
    handle = tiny_handle()
    with torch.no_grad():
        handle.model.model.layers[1].mlp.down_proj.weight.fill_(value)
    with pytest.raises(ReleaseFailed) as ei:
        check_finite_output(handle, stage="compress: stages.1 (gptq)")
    err = ei.value
    assert err.exit_code == 1 and err.stage == "compress: stages.1 (gptq)"
    assert "stage 'compress: stages.1 (gptq)'" in str(err) and "not finite" in str(err)


def test_encoder_output_is_checked_too():
    class Encoder(torch.nn.Module):
        def forward(self, input_ids):
            return torch.full((1, input_ids.shape[1], 4), float("nan"))

    handle = tiny_handle()
    handle.model = Encoder()
    handle.source.architecture = "encoder"
    with pytest.raises(ReleaseFailed):
        check_finite_output(handle, stage="s")


def test_onnxruntime_model_is_probed_too():
    """ONNX Runtime models accept `model(input_ids=..., use_cache=False)`: no runtime skips."""
    for mod in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(mod)
    from compress.methods.onnx_int8 import OnnxInt8Config

    handle = tiny_handle()
    run_stage(handle, OnnxInt8Config())
    assert handle.runtime == "onnxruntime"
    out = probe_output(handle)
    assert out.shape == (1, PROBE_TOKENS, 128) and bool(torch.isfinite(out).all())
    check_finite_output(handle, stage="compress: stages.0 (onnx_int8)")

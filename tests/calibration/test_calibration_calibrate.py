"""compress.calibration.calibrate: the calibration guard every calibrated stage shares."""

import pytest

from compress.errors import BadInput
from compress.methods import run_stage
from compress.methods.awq import AWQConfig
from compress.methods.gptq import GPTQConfig
from compress.methods.smoothquant import SmoothQuantConfig
from compress.methods.sparsegpt import SparseGPTConfig
from compress.methods.wanda import WandaConfig
from compress.testing import snapshot, tiny_calibration, tiny_handle, unchanged


@pytest.mark.parametrize(
    "cfg",
    [
        GPTQConfig(group_size=32),
        AWQConfig(group_size=32),
        SmoothQuantConfig(),
        WandaConfig(),
        SparseGPTConfig(),
    ],
)
def test_calibrated_stage_without_data_names_itself_and_changes_nothing(cfg):
    h = tiny_handle()
    before = snapshot(h.model)
    with pytest.raises(BadInput, match=f"{cfg.method} needs calibration data") as e:
        run_stage(h, cfg, None)
    assert "calibration:" in e.value.fix
    assert unchanged(h.model, before)


@pytest.mark.parametrize(("env", "progress", "shown"), [(None, True, True), ("1", True, False)])
def test_layer_bar_follows_tqdm_disable(monkeypatch, capsys, env, progress, shown):
    """The CLI's --no-progress sets TQDM_DISABLE=1: the per-layer calibration bar obeys it."""
    from compress.calibration.calibrate import sequential

    if env is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", env)
    sequential(tiny_handle().model, tiny_calibration(2, 8), lambda ctx: None, progress=progress)
    assert ("layer" in capsys.readouterr().err) is shown
    sequential(tiny_handle().model, tiny_calibration(2, 8), lambda ctx: None, progress=False)
    assert capsys.readouterr().err == ""

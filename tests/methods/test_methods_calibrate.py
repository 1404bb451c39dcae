"""compress.methods.calibrate: the calibration guard every calibrated stage shares."""

import pytest

from compress.errors import StageFailed
from compress.methods import get_apply
from compress.methods.awq import AWQConfig
from compress.methods.gptq import GPTQConfig
from compress.methods.smoothquant import SmoothQuantConfig
from compress.testing import snapshot, tiny_handle, unchanged


@pytest.mark.parametrize(
    "cfg", [GPTQConfig(group_size=32), AWQConfig(group_size=32), SmoothQuantConfig()]
)
def test_calibrated_stage_without_data_names_itself_and_changes_nothing(cfg):
    h = tiny_handle()
    before = snapshot(h.model)
    with pytest.raises(StageFailed, match=f"{cfg.method} needs calibration data") as e:
        get_apply(cfg.method)(h, cfg, None)
    assert "calibration:" in e.value.fix
    assert unchanged(h.model, before)

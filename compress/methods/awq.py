"""`awq`: activation-aware weight quantization (Lin et al. 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from compress._config import StageBase

if TYPE_CHECKING:
    from compress.handle import ModelHandle


class AWQConfig(StageBase):
    needs_calibration: ClassVar[bool] = True
    method: Literal["awq"] = "awq"
    bits: Literal[4] = 4
    group_size: int = 128
    symmetric: bool = False
    grid: int = Field(20, ge=2, description="alpha grid points in [0, 1)")
    clip: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    batch_size: int = Field(8, ge=1)


def apply(handle: ModelHandle, cfg: AWQConfig, calibration=None) -> dict:
    raise NotImplementedError("awq is being implemented")

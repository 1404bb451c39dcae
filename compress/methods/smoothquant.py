"""`smoothquant`: migrate activation outliers into weights (Xiao et al. 2023), then W8A8."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from compress._config import StageBase

if TYPE_CHECKING:
    from compress.handle import ModelHandle


class SmoothQuantConfig(StageBase):
    needs_calibration: ClassVar[bool] = True
    method: Literal["smoothquant"] = "smoothquant"
    alpha: float = Field(0.5, ge=0, le=1, description="migration strength")
    w8a8: bool = Field(True, description="quantize to int8 W8A8 after smoothing")
    batch_size: int = Field(8, ge=1)


def apply(handle: ModelHandle, cfg: SmoothQuantConfig, calibration=None) -> dict:
    raise NotImplementedError("smoothquant is being implemented")

"""`gptq`: GPTQ (Frantar et al. 2022) with Hessians accumulated layer by layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from compress._config import StageBase

if TYPE_CHECKING:
    from compress.handle import ModelHandle


class GPTQConfig(StageBase):
    needs_calibration: ClassVar[bool] = True
    method: Literal["gptq"] = "gptq"
    bits: Literal[2, 3, 4, 8] = 4
    group_size: int | None = Field(128, description="null = one scale per output channel")
    symmetric: bool = True
    act_order: bool = False
    damp: float = Field(0.01, gt=0, le=1, description="fraction of mean diag(H) added")
    block_size: int = Field(128, ge=1)
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    batch_size: int = Field(8, ge=1, description="calibration samples per forward")


def apply(handle: ModelHandle, cfg: GPTQConfig, calibration=None) -> dict:
    raise NotImplementedError("gptq is being implemented")

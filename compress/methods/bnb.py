"""`bnb`: bitsandbytes NF4 / FP4 (optionally double-quantized) and LLM.int8()."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from compress._config import StageBase

if TYPE_CHECKING:
    from compress.handle import ModelHandle


class BnbConfig(StageBase):
    method: Literal["bnb"] = "bnb"
    quant_type: Literal["nf4", "fp4", "int8"] = "nf4"
    double_quant: bool = True
    threshold: float = Field(6.0, ge=0, description="LLM.int8 outlier threshold")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


def apply(handle: ModelHandle, cfg: BnbConfig, calibration=None) -> dict:
    raise NotImplementedError("bnb is being implemented")

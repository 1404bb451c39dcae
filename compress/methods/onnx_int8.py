"""`onnx_int8`: export to ONNX and quantize with ONNX Runtime (dynamic int8)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from compress._config import StageBase

if TYPE_CHECKING:
    from compress.handle import ModelHandle


class OnnxInt8Config(StageBase):
    method: Literal["onnx_int8"] = "onnx_int8"
    per_channel: bool = True
    opset: int = Field(18, ge=13)
    kv_cache: bool = Field(True, description="export decoders with past key/values")


def apply(handle: ModelHandle, cfg: OnnxInt8Config, calibration=None) -> dict:
    raise NotImplementedError("onnx_int8 is being implemented")

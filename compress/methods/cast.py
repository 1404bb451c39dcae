"""`cast`: change the dtype of the model's float weights and nothing else (no quantization).

The control a recipe carries beside real compression: it shows how much of a speed-up or
memory saving a plain bfloat16 / float16 cast already gives, so the compression is credited
only with what it adds. Already quantized modules keep their own storage.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from compress._config import Strict
from compress.methods.registry import StageContext, StageRecord, register


class CastConfig(Strict):
    method: Literal["cast"] = "cast"
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of every float weight and of the computation"
    )


@register(CastConfig)
def apply(ctx: StageContext, cfg: CastConfig) -> StageRecord:
    import torch

    from compress.targets import cast_float_parts

    t0 = time.perf_counter()
    handle = ctx.model
    before = str(handle.dtype)
    dtype = getattr(torch, cfg.dtype)
    cast_float_parts(handle.model, dtype)
    handle.dtype = cfg.dtype
    notes = [
        f"float weights and computation cast {before} -> {cfg.dtype}; no weight is quantized: "
        "this is the control that compression is measured against"
    ]
    if cfg.dtype == "float16" and handle.device == "cpu":
        notes.append("float16 matmuls on CPU are often slower than float32 (few CPUs have them)")
    return StageRecord.make(
        method="cast",
        summary=f"cast float weights {before} -> {cfg.dtype}",
        kernel=f"float matmul in {cfg.dtype}",
        compute_dtype=cfg.dtype,
        notes=notes,
        seconds=time.perf_counter() - t0,
    )

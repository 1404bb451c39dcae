"""`dynamic_int8`: int8 weights AND int8 activations quantized on the fly (W8A8 dynamic).

On CPU this is torch.ao's fbgemm dynamic linear: the fastest int8 path here, but its
activations get ONE scale per tensor, which costs quality on models with activation outliers
(SmoothQuant exists for that). The report shows the quality cost next to the speed.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from compress._config import StageBase
from compress.methods.registry import StageContext, StageRecord, register


class DynamicInt8Config(StageBase):
    method: Literal["dynamic_int8"] = "dynamic_int8"
    per_channel: bool = Field(True, description="one weight scale per output channel")


@register(DynamicInt8Config)
def apply(ctx: StageContext, cfg: DynamicInt8Config) -> StageRecord:
    handle = ctx.model
    import torch

    from compress.errors import BadInput
    from compress.progress import tqdm
    from compress.quant.dynamic import DynamicInt8Linear
    from compress.targets import cast_float_parts, linears, set_module

    if handle.device != "cpu":
        raise BadInput(
            f"dynamic_int8 runs on torch.ao's CPU kernels; this run uses device '{handle.device}'.",
            fix="Run with --device cpu, or use method rtn (bits 8) on CUDA.",
        )
    t0 = time.perf_counter()
    model = handle.model
    cast_float_parts(model, torch.float32)
    chosen = linears(model, cfg.targets, cfg.ignore, stage="dynamic_int8")
    n_params = 0
    for name, lin in tqdm(list(chosen.items()), desc="dynamic int8", unit="layer", leave=False):
        set_module(model, name, DynamicInt8Linear.from_float(lin, per_channel=cfg.per_channel))
        n_params += lin.weight.numel()
    handle.dtype = "float32"
    notes = ["activations quantized per tensor at run time (fbgemm dynamic linear)"]
    lm_head = getattr(model, "get_output_embeddings", lambda: None)()
    if lm_head is not None and isinstance(lm_head, DynamicInt8Linear):
        notes.append("lm_head untied from the input embedding, which stays float32")
    return StageRecord.make(
        method="dynamic_int8",
        summary=f"W8A8 dynamic, {'per-channel' if cfg.per_channel else 'per-tensor'} weights, "
        f"{len(chosen)} Linear layers ({n_params / 1e6:.1f}M weights)",
        layers=len(chosen),
        weights_quantized=n_params,
        kernel="torch.ao quantized::linear_dynamic (fbgemm)",
        compute_dtype="float32",
        notes=notes,
        seconds=time.perf_counter() - t0,
    )

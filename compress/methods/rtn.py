"""`rtn`: round-to-nearest weight-only quantization (int8 per channel, int4 per group).

Weights are stored for real as int8 / packed int4 buffers and run on PyTorch's own int8 and
int4 matmul kernels (see compress/quant/modules.py). A tied input embedding follows its
lm_head when the lm_head is quantized to int8: both read one int8 matrix.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from pydantic import Field, model_validator

from compress._config import StageBase, check_weight_grid
from compress.methods.registry import StageContext, StageRecord, register

log = logging.getLogger(__name__)


class RTNConfig(StageBase):
    method: Literal["rtn"] = "rtn"
    bits: Literal[2, 3, 4, 8]
    group_size: int | None = Field(
        None,
        description="inputs per scale; null = one scale per output channel (at 2-4 bits stored "
        "in int4 groups with the scale repeated)",
    )
    symmetric: bool = Field(True, description="false = min/max grid with a float zero point")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="activation dtype; the CPU int8/int4 kernels are fast in bfloat16"
    )

    @model_validator(mode="after")
    def _kernel_constraints(self) -> RTNConfig:
        check_weight_grid(self.bits, self.group_size, self.symmetric)
        return self


def _tied_embedding(model, lm_head):
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is lm_head.weight:
        return emb
    return None


@register(RTNConfig)
def apply(ctx: StageContext, cfg: RTNConfig) -> StageRecord:
    handle = ctx.model
    import torch

    from compress.errors import ReleaseFailed
    from compress.numerics.grid import as_int4, container_notes, quantize
    from compress.progress import tqdm
    from compress.quant.modules import (
        Int4Linear,
        Int8Embedding,
        Int8Linear,
        weight_only_kernel,
    )
    from compress.stream.walk import linears_layer_by_layer
    from compress.targets import cast_float_parts, select_linears, set_module

    t0 = time.perf_counter()
    model = handle.model
    dtype = getattr(torch, cfg.compute_dtype)
    chosen = select_linears(
        model, cfg.targets, cfg.ignore, stage="rtn", group_size=cfg.group_size, bits=cfg.bits
    )
    lm_head = getattr(model, "get_output_embeddings", lambda: None)()
    notes: list[str] = []
    n_params = 0
    walk = linears_layer_by_layer(model, chosen, "rtn")  # one layer at a time when streamed
    for name, lin in tqdm(walk, total=len(chosen), desc=f"rtn int{cfg.bits}", unit="layer",
                          leave=False):  # fmt: skip
        qt = quantize(lin.weight, cfg.bits, cfg.group_size, cfg.symmetric)
        if not (torch.isfinite(qt.scale).all() and torch.isfinite(qt.zero).all()):
            raise ReleaseFailed(f"rtn: layer '{name}' has non-finite weights or scales.")
        if cfg.bits == 8:
            new = Int8Linear.from_float(lin, qt, dtype)
        else:  # 2/3-bit codes and per-channel grids sit exactly in int4 containers
            new = Int4Linear.from_float(lin, as_int4(qt), dtype)
        tied = _tied_embedding(model, lin) if lin is lm_head else None
        set_module(model, name, new)
        n_params += lin.weight.numel()
        if tied is not None and cfg.bits == 8:
            emb_name = next(n for n, m in model.named_modules() if m is tied)
            scale = getattr(tied, "embed_scale", None)
            scale = float(scale) if scale is not None else None
            set_module(model, emb_name, Int8Embedding(new, dtype, scale))
            notes.append(f"tied {emb_name} + {name} stored once as int8 per row")
        elif tied is not None:
            notes.append(
                f"{name} untied from the input embedding, which stays in {cfg.compute_dtype}"
                " (no int4 embedding lookup): the embedding is NOT compressed"
            )
    notes += container_notes(cfg.bits, cfg.group_size)
    cast_float_parts(model, dtype)
    handle.dtype = cfg.compute_dtype
    kernel = weight_only_kernel(cfg.bits, handle.device, dtype)
    grid = "symmetric" if cfg.symmetric else "asymmetric (min/max, float zero)"
    return StageRecord.make(
        method="rtn",
        summary=f"int{cfg.bits} {grid}, "
        + (f"group {cfg.group_size}" if cfg.group_size else "per channel")
        + f", {len(chosen)} Linear layers ({n_params / 1e6:.1f}M weights)",
        layers=len(chosen),
        weights_quantized=n_params,
        kernel=kernel,
        compute_dtype=cfg.compute_dtype,
        notes=notes + [f"float parts of the model now compute in {cfg.compute_dtype}"],
        seconds=time.perf_counter() - t0,
    )

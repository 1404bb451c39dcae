"""`gptq`: GPTQ (Frantar et al. 2022) with Hessians accumulated layer by layer.

The shared loop (calibration/calibrate.py) walks the decoder; inside each decoder layer the
targeted Linears are split into groups that read the same input (Llama: q/k/v, o, gate/up,
down) in the order they run. "True sequential" (default, as the reference code): each group's
Hessian H = 2/n sum x^T x is collected on inputs produced by the layer with every earlier group
already quantized, then that group is quantized (one GPTQ solve per group: its Linears share H,
so their rows are quantized together). Runs that only need a group's inputs stop right after
that group's first Linear. After the layer, the loop recomputes its outputs with the quantized
weights for the next layer.

During calibration the quantized Linears keep dense (dequantized) weights in the calibration
dtype; the packed int4/int8 modules are swapped in after the last layer. Math in float32.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from compress._config import StageBase, check_weight_grid
from compress.methods.registry import StageContext, StageRecord, register

if TYPE_CHECKING:
    import torch
    from torch import nn

    from compress.calibration.calibrate import CalibrationData, LayerContext


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
    true_sequential: bool = Field(
        True,
        description="collect each group's Hessian after the earlier groups of the layer are "
        "quantized (reference behaviour); false = one pass collects all of the layer's Hessians",
    )
    preserve_zeros: bool = Field(
        False,
        description="weights that are exactly 0 (e.g. from a pruning stage) stay 0: their "
        "errors are not spread and they quantize to code 0; needs symmetric: true",
    )
    calibration_dtype: Literal["bfloat16", "float16", "float32"] | None = Field(
        None,
        description="dtype of the calibration forwards and of the weights GPTQ starts from; "
        "null = compute_dtype (what the compressed model runs in; bf16 GEMMs are ~4x faster "
        "than float32 on CPUs with avx512_bf16)",
    )

    @model_validator(mode="after")
    def _kernel_constraints(self) -> GPTQConfig:
        check_weight_grid(self.bits, self.group_size, self.symmetric)
        if self.preserve_zeros and not self.symmetric:
            raise ValueError(
                "preserve_zeros needs symmetric: true (an asymmetric grid has no exact 0, so "
                "pruned weights would come back non-zero)"
            )
        return self


def _solve(W: torch.Tensor, H: torch.Tensor, cfg: GPTQConfig, static: bool, name: str) -> tuple:
    """One GPTQ solve of the stacked rows W; (QuantizedTensor, per-row error). H is consumed
    (a big one becomes the solve's factor in place)."""
    from compress.errors import StageFailed
    from compress.numerics.gptq import gptq_quantize

    try:
        return gptq_quantize(
            W,
            H,
            cfg.bits,
            cfg.group_size,
            cfg.symmetric,
            cfg.act_order,
            cfg.damp,
            cfg.block_size,
            static_groups=static,
            keep_zeros=cfg.preserve_zeros,
            consume_h=True,
        )
    except ValueError as e:
        raise StageFailed(f"gptq: layer '{name}' failed: {e}.") from None


def _quantize_group(
    lctx: LayerContext,
    names: list[str],
    H: torch.Tensor,
    n_rows: int,
    *,
    cfg: GPTQConfig,
    static: bool,
    dtype: torch.dtype,
    errors: dict[str, float],
    new_modules: dict[str, nn.Module],
    zeros: list[int],
) -> None:
    """Quantize one group of Linears sharing H; record their packed modules and output errors,
    and write the dequantized weights back for the loop's later forwards."""
    import torch

    from compress.calibration import layerwise
    from compress.errors import ReleaseFailed
    from compress.numerics.grid import as_int4
    from compress.numerics.hessian import output_energy
    from compress.quant.modules import Int4Linear, Int8Linear

    mods = [lctx.layer.get_submodule(s) for s in names]
    full = [f"{lctx.name}.{s}" for s in names]
    layerwise.check_inputs(full[0], H, n_rows, "gptq")
    W = torch.cat([m.weight.detach() for m in mods])  # float32 chunk by chunk inside the solve
    if cfg.preserve_zeros:  # counted here, layer by layer (a streamed model is on disk before)
        zeros[0] += int((W == 0).sum())
    energy = output_energy(W, H)  # before the solve, which consumes H
    qt, row_err = _solve(W, H, cfg, static, full[0])
    H.set_()  # consumed (a big one is the solve's factor now): its memory goes back at once
    del W
    r0 = 0
    for m, name in zip(mods, full, strict=True):
        r1 = r0 + m.out_features
        part = qt.rows(slice(r0, r1))
        if not (torch.isfinite(part.scale).all() and torch.isfinite(part.zero).all()):
            raise ReleaseFailed(f"gptq: layer '{name}' has non-finite weights or scales.")
        _write_back(m, part, name)
        errors[name] = float(row_err[r0:r1].sum() / energy[r0:r1].sum().clamp(min=1e-30))
        if cfg.bits == 8:
            new_modules[name] = Int8Linear.from_float(m, part, dtype)
        else:
            new_modules[name] = Int4Linear.from_float(m, as_int4(part), dtype)
        r0 = r1


def _write_back(m: nn.Linear, part, name: str, rows: int = 1024) -> None:
    """The dequantized weights into `m` (the loop's later forwards see them), a block of rows
    at a time (a 7B down_proj's float32 copy would be 180 MB at once)."""
    import torch

    from compress.errors import ReleaseFailed
    from compress.numerics.grid import dequantize

    for r in range(0, m.out_features, rows):
        sl = slice(r, r + rows)
        deq = dequantize(part.rows(sl))
        if not torch.isfinite(deq).all():
            raise ReleaseFailed(f"gptq: layer '{name}' has non-finite weights or scales.")
        with torch.no_grad():
            m.weight[sl].copy_(deq.to(m.weight.dtype))


def _notes(
    cfg: GPTQConfig, calibration: CalibrationData, static: bool, zeros: int, n_params: int
) -> list[str]:
    """The record's notes: calibration, damping, preserve_zeros, act_order, containers."""
    from compress.numerics.grid import container_notes

    notes = [
        f"Hessians from {calibration.input_ids.shape[0]} x {calibration.input_ids.shape[1]} "
        f"calibration tokens, forwards in {cfg.calibration_dtype or cfg.compute_dtype}, "
        + (
            "true sequential (each group's inputs come from the layer with earlier groups "
            "already quantized)"
            if cfg.true_sequential
            else "one pass per layer (all Hessians from the unquantized layer)"
        ),
        f"damp {cfg.damp} x mean diag(H), block size {cfg.block_size}",
    ]
    if cfg.preserve_zeros:
        notes.append(
            f"preserve_zeros: the {100 * zeros / n_params:.1f}% of targeted weights that were "
            "exactly 0 stay 0 (code 0 of the symmetric grid), so a pruning mask survives"
        )
    if cfg.act_order:
        notes.append(
            "act_order: columns in decreasing diag(H) order"
            + (
                "; static groups (scale/zero from the original weights in natural column "
                "order), so storage is a plain grouped grid"
                if static
                else ""
            )
        )
    notes += container_notes(cfg.bits, cfg.group_size)
    notes.append(f"float parts of the model now compute in {cfg.compute_dtype}")
    return notes


def _summary(cfg: GPTQConfig, static: bool, n_layers: int, n_params: int) -> str:
    """One line: bits, grid, layout, act_order, layer and weight counts."""
    grid = "symmetric" if cfg.symmetric else "asymmetric (min/max, float zero)"
    layout = f"group {cfg.group_size}" if cfg.group_size else "per channel"
    return (
        f"gptq int{cfg.bits} {grid}, {layout}"
        + (", act_order (static groups)" if static else ", act_order" if cfg.act_order else "")
        + f", {n_layers} Linear layers ({n_params / 1e6:.1f}M weights)"
    )


@register(GPTQConfig)
def apply(ctx: StageContext, cfg: GPTQConfig) -> StageRecord:
    handle, calibration = ctx.model, ctx.calibration()
    import torch

    from compress.calibration import layerwise
    from compress.calibration.calibrate import require_calibration
    from compress.numerics.hessian import hessian_update
    from compress.quant.modules import weight_only_kernel
    from compress.targets import cast_float_parts, select_linears, set_module

    t0 = time.perf_counter()
    require_calibration(calibration, "gptq", "layer inputs to build its Hessians")
    model = handle.model
    dtype = getattr(torch, cfg.compute_dtype)
    calib_dtype = getattr(torch, cfg.calibration_dtype or cfg.compute_dtype)
    chosen = select_linears(
        model, cfg.targets, cfg.ignore, stage="gptq", group_size=cfg.group_size, bits=cfg.bits
    )
    by_layer = layerwise.by_decoder_layer(model, chosen, "gptq")
    zeros = [0]
    static = cfg.act_order and cfg.group_size is not None
    new_modules: dict[str, nn.Module] = {}
    errors: dict[str, float] = {}
    quantize_group = functools.partial(
        _quantize_group,
        cfg=cfg,
        static=static,
        dtype=dtype,
        errors=errors,
        new_modules=new_modules,
        zeros=zeros,
    )

    def swap_in(lctx: LayerContext) -> None:  # once the loop is done with the layer's forwards
        for name in [n for n in new_modules if n.startswith(lctx.name + ".")]:
            set_module(model, name, new_modules.pop(name))

    cast_float_parts(model, calib_dtype)
    per_layer = layerwise.run(
        model,
        calibration,
        by_layer,
        quantize_group,
        hessian_update,
        true_sequential=cfg.true_sequential,
        batch_size=cfg.batch_size,
        desc=f"gptq int{cfg.bits}",
        after_layer=swap_in,
    )
    cast_float_parts(model, dtype)
    handle.dtype = cfg.compute_dtype

    n_params = sum(m.weight.numel() for m in chosen.values())
    notes = _notes(cfg, calibration, static, zeros[0], n_params)
    return StageRecord.make(
        method="gptq",
        summary=_summary(cfg, static, len(chosen), n_params),
        layers=len(chosen),
        weights_quantized=n_params,
        kernel=weight_only_kernel(cfg.bits, handle.device, dtype),
        compute_dtype=cfg.compute_dtype,
        static_groups=static,
        output_error=layerwise.error_summary(
            errors,
            "relative layer output error ||X(W - W_q)^T||^2 / ||X W^T||^2 on calibration",
        ),
        notes=notes,
        seconds=time.perf_counter() - t0,
        per_layer_seconds=per_layer,
    )

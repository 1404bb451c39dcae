"""`smoothquant`: migrate activation outliers into weights (Xiao et al. 2023), then W8A8.

Per decoder layer, through the shared sequential loop (compress/calibration/calibrate.py):

    observe   hooks collect max |x_j| per input channel of each group's shared input
    smooth    s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha) over the group's linears
              (numerics/smooth.py); 1 / s folded into the producer (norm weight; v_proj rows for
              o_proj when shapes allow; up_proj rows for down_proj), s into the weight columns:
              exactly output-preserving in float
    quantize  (w8a8: true) targeted linears -> on CPU DynamicInt8Linear: torch.ao fbgemm W8A8
              with per-channel int8 weights and one dynamic activation scale per tensor; on
              CUDA W8A8Linear: int8 x int8 GEMM (torch._int_mm) with one dynamic activation
              scale per token (quant/w8a8.py). Smoothing pays off in the activation scale.
              The loop then recomputes the layer's outputs with it.

With w8a8: false the stage only smooths (float weights), so another method can follow.
Targeted linears outside the decoder layers (lm_head when not ignored) are quantized unsmoothed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from compress._config import StageBase
from compress.methods.registry import StageContext, StageRecord, register

if TYPE_CHECKING:
    import torch
    from torch import nn

    from compress.calibration.calibrate import LayerContext
    from compress.calibration.mappings import LayerGroup, Plan
    from compress.handle import ModelHandle


class SmoothQuantConfig(StageBase):
    needs_calibration: ClassVar[bool] = True
    method: Literal["smoothquant"] = "smoothquant"
    alpha: float = Field(0.5, ge=0, le=1, description="migration strength")
    w8a8: bool = Field(True, description="quantize to int8 W8A8 after smoothing")
    batch_size: int = Field(8, ge=1)
    per_channel: bool = Field(True, description="W8A8 weights: one scale per output channel")


class _AbsMax:
    def __init__(self):
        self.value = None

    def __call__(self, _module, x, _out) -> None:
        m = x.detach().reshape(-1, x.shape[-1]).abs().amax(0).float()
        self.value = m if self.value is None else self.value.maximum(m)


def _to_w8a8(lin: nn.Linear, per_channel: bool) -> nn.Module:
    """CUDA: int8 x int8 GEMM with one dynamic activation scale per token."""
    from compress.quant.w8a8 import W8A8Linear

    return W8A8Linear.from_float(lin, lin.weight.dtype, per_channel)


def _to_dynamic_int8(lin: nn.Linear, per_channel: bool) -> nn.Module:
    """CPU: torch.ao fbgemm dynamic int8 linear."""
    from compress.quant.dynamic import DynamicInt8Linear

    return DynamicInt8Linear.from_float(lin, per_channel)


def _check_device(handle: ModelHandle, cfg: SmoothQuantConfig) -> None:
    """W8A8 needs int8 kernels: cpu or cuda."""
    import torch

    from compress.errors import BadInput

    if cfg.w8a8 and torch.device(handle.device).type not in ("cpu", "cuda"):
        raise BadInput(
            f"smoothquant w8a8 has int8 kernels for cpu and cuda; this run uses device "
            f"'{handle.device}'.",
            fix="Run with --device cpu or cuda, or set w8a8: false and follow with another method.",
        )


def _quantizer(
    handle: ModelHandle, cfg: SmoothQuantConfig, chosen: dict[str, nn.Linear], on_cuda: bool
) -> tuple[Callable[[nn.Linear], nn.Module], type, str]:
    """(Linear -> W8A8 module, its class, kernel name) for the device; on CPU the float parts
    are cast to float32 first (w8a8 only)."""
    import torch

    from compress.errors import BadInput
    from compress.targets import cast_float_parts

    if on_cuda:
        from compress.quant.w8a8 import W8A8Linear, supports

        odd = [n for n, m in chosen.items() if not supports(m.in_features, m.out_features)]
        if odd:
            raise BadInput(
                f"smoothquant w8a8 on cuda: the int8 GEMM needs feature sizes that are "
                f"multiples of 8; {', '.join(odd[:3])} are not.",
                fix="Add those layers to ignore:, or run on --device cpu.",
            )
        quantized = functools.partial(_to_w8a8, per_channel=cfg.per_channel)
        return quantized, W8A8Linear, "torch._int_mm (cuBLASLt int8 GEMM)"
    from compress.quant.dynamic import DynamicInt8Linear

    cast_float_parts(handle.model, torch.float32)
    handle.dtype = "float32"
    quantized = functools.partial(_to_dynamic_int8, per_channel=cfg.per_channel)
    return quantized, DynamicInt8Linear, "torch.ao quantized::linear_dynamic (fbgemm)"


def _smooth_group(
    g: LayerGroup, amax: torch.Tensor, alpha: float, norm_offset: float
) -> list[float]:
    """Fold the group's smoothing scales into its producer and weights; [max |x|, after]."""
    from compress.numerics.smooth import (
        fold_into_linear_rows,
        fold_into_norm,
        scale_input_columns,
        smooth_scales,
    )

    weights = [lin.weight for lin in g.linears.values()]
    s = smooth_scales(amax, weights, alpha).to(weights[0].device)
    if g.kind == "norm":
        bias = getattr(g.prev, "bias", None)
        fold_into_norm(g.prev.weight, s, bias, norm_offset)
    else:
        fold_into_linear_rows(g.prev.weight, s, g.prev.bias)
    for lin in g.linears.values():
        scale_input_columns(lin.weight, s)
    return [float(amax.max()), float((amax / s).max())]


def _on_layer(
    lctx: LayerContext,
    plan: Plan,
    cfg: SmoothQuantConfig,
    quantized: Callable[[nn.Linear], nn.Module] | None,
) -> dict:
    """Observe one decoder layer, smooth its groups, then (w8a8) quantize its targets."""
    from compress.targets import set_module

    groups, targets = plan.groups[lctx.index], plan.targets[lctx.index]
    if not targets:
        return {}
    stats = {next(iter(g.linears)): _AbsMax() for g in groups}
    if stats:
        lctx.run(stats)
    rec: dict = {"layer": lctx.index, "act_absmax": {}}
    for g in groups:
        amax = stats[next(iter(g.linears))].value
        rec["act_absmax"][g.prev_name] = _smooth_group(g, amax, cfg.alpha, plan.family.norm_offset)
    if cfg.w8a8:
        for t in targets:
            lin = lctx.layer.get_submodule(t)
            set_module(lctx.layer, t, quantized(lin))
    return rec


def _w8a8_notes(
    plan: Plan, model: nn.Module, dtype: str, quant_cls: type, on_cuda: bool
) -> list[str]:
    """Notes on the unsmoothed outside linears, an untied lm_head and the activation scales."""
    notes: list[str] = []
    if plan.outside:
        notes.append(f"{', '.join(plan.outside)}: outside the decoder layers, not smoothed")
    lm_head = getattr(model, "get_output_embeddings", lambda: None)()
    if lm_head is not None and isinstance(lm_head, quant_cls):
        notes.append(f"lm_head untied from the input embedding, which stays {dtype}")
    notes.append(
        "activations quantized per token at run time (int8 GEMM)"
        if on_cuda
        else "activations quantized per tensor at run time (fbgemm dynamic linear)"
    )
    return notes


def _smoothing_note(cfg: SmoothQuantConfig, records: list[dict]) -> list[str]:
    """How much smoothing reduced the largest activation per group, on calibration."""
    pairs = [v for r in records for v in r.get("act_absmax", {}).values()]
    if not pairs:
        return []
    ratio = sum(a / max(b, 1e-30) for a, b in pairs) / len(pairs)
    return [
        f"alpha {cfg.alpha}: {len(pairs)} groups smoothed; max |activation| per group "
        f"reduced {ratio:.1f}x on average (calibration)"
    ]


@register(SmoothQuantConfig)
def apply(ctx: StageContext, cfg: SmoothQuantConfig) -> StageRecord:
    handle, calibration = ctx.model, ctx.calibration()
    import torch

    from compress.calibration.calibrate import require_calibration, sequential
    from compress.calibration.mappings import plan as make_plan
    from compress.targets import linears, set_module

    t0 = time.perf_counter()
    model = handle.model
    require_calibration(calibration, "smoothquant", "activation ranges pick the scales")
    on_cuda = torch.device(handle.device).type == "cuda"
    _check_device(handle, cfg)
    chosen = linears(model, cfg.targets, cfg.ignore, stage="smoothquant")
    plan = make_plan(model, chosen, stage="smoothquant")
    quantized, quant_cls, kernel = None, None, "none (float)"
    if cfg.w8a8:
        quantized, quant_cls, kernel = _quantizer(handle, cfg, chosen, on_cuda)
    on_layer = functools.partial(_on_layer, plan=plan, cfg=cfg, quantized=quantized)
    records = sequential(
        model, calibration, on_layer, batch_size=cfg.batch_size, desc="smoothquant"
    )
    notes = list(plan.notes)
    if cfg.w8a8:
        for name in plan.outside:
            set_module(model, name, quantized(chosen[name]))
        notes += _w8a8_notes(plan, model, handle.dtype, quant_cls, on_cuda)
    notes += _smoothing_note(cfg, records)
    n_params = sum(m.weight.numel() for m in chosen.values())
    what = (
        f"W8A8 dynamic, {'per-channel' if cfg.per_channel else 'per-tensor'} weights"
        if cfg.w8a8
        else "smoothing only (float weights)"
    )
    return StageRecord.make(
        method="smoothquant",
        summary=f"SmoothQuant alpha {cfg.alpha}, {what}, {len(chosen)} Linear layers "
        f"({n_params / 1e6:.1f}M weights)",
        layers=len(chosen),
        weights_quantized=n_params if cfg.w8a8 else 0,
        kernel=kernel if cfg.w8a8 else "none (float)",
        compute_dtype=handle.dtype,
        notes=notes,
        seconds=time.perf_counter() - t0,
        per_layer=[r for r in records if r],
    )

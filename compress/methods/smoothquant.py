"""`smoothquant`: migrate activation outliers into weights (Xiao et al. 2023), then W8A8.

Per decoder layer, through the shared sequential loop (compress/methods/calibrate.py):

    observe   hooks collect max |x_j| per input channel of each group's shared input
    smooth    s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha) over the group's linears
              (quant/smooth.py); 1 / s folded into the producer (norm weight; v_proj rows for
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

import time
from typing import ClassVar, Literal

from pydantic import Field

from compress._config import StageBase
from compress.methods.registry import StageContext, StageRecord, register


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


@register(SmoothQuantConfig)
def apply(ctx: StageContext, cfg: SmoothQuantConfig) -> StageRecord:
    handle, calibration = ctx.model, ctx.calibration()
    import torch

    from compress.errors import BadInput
    from compress.methods.calibrate import require_calibration, sequential
    from compress.methods.mappings import plan as make_plan
    from compress.methods.targets import cast_float_parts, linears, set_module
    from compress.quant.smooth import (
        fold_into_linear_rows,
        fold_into_norm,
        scale_input_columns,
        smooth_scales,
    )

    t0 = time.perf_counter()
    model = handle.model
    require_calibration(calibration, "smoothquant", "activation ranges pick the scales")
    on_cuda = torch.device(handle.device).type == "cuda"
    if cfg.w8a8 and torch.device(handle.device).type not in ("cpu", "cuda"):
        raise BadInput(
            f"smoothquant w8a8 has int8 kernels for cpu and cuda; this run uses device "
            f"'{handle.device}'.",
            fix="Run with --device cpu or cuda, or set w8a8: false and follow with another method.",
        )
    chosen = linears(model, cfg.targets, cfg.ignore, stage="smoothquant")
    plan = make_plan(model, chosen, stage="smoothquant")
    if cfg.w8a8 and on_cuda:
        from compress.quant.w8a8 import W8A8Linear, supports

        odd = [n for n, m in chosen.items() if not supports(m.in_features, m.out_features)]
        if odd:
            raise BadInput(
                f"smoothquant w8a8 on cuda: the int8 GEMM needs feature sizes that are "
                f"multiples of 8; {', '.join(odd[:3])} are not.",
                fix="Add those layers to ignore:, or run on --device cpu.",
            )

        def quantized(lin):
            return W8A8Linear.from_float(lin, lin.weight.dtype, cfg.per_channel)

        quant_cls, kernel = W8A8Linear, "torch._int_mm (cuBLASLt int8 GEMM)"
    elif cfg.w8a8:
        from compress.quant.dynamic import DynamicInt8Linear

        cast_float_parts(model, torch.float32)
        handle.dtype = "float32"

        def quantized(lin):
            return DynamicInt8Linear.from_float(lin, cfg.per_channel)

        quant_cls, kernel = DynamicInt8Linear, "torch.ao quantized::linear_dynamic (fbgemm)"

    def on_layer(ctx) -> dict:
        groups, targets = plan.groups[ctx.index], plan.targets[ctx.index]
        if not targets:
            return {}
        stats = {next(iter(g.linears)): _AbsMax() for g in groups}
        if stats:
            ctx.run(stats)
        rec: dict = {"layer": ctx.index, "act_absmax": {}}
        for g in groups:
            amax = stats[next(iter(g.linears))].value
            weights = [lin.weight for lin in g.linears.values()]
            s = smooth_scales(amax, weights, cfg.alpha).to(weights[0].device)
            if g.kind == "norm":
                bias = getattr(g.prev, "bias", None)
                fold_into_norm(g.prev.weight, s, bias, plan.family.norm_offset)
            else:
                fold_into_linear_rows(g.prev.weight, s, g.prev.bias)
            for lin in g.linears.values():
                scale_input_columns(lin.weight, s)
            rec["act_absmax"][g.prev_name] = [float(amax.max()), float((amax / s).max())]
        if cfg.w8a8:
            for t in targets:
                lin = ctx.layer.get_submodule(t)
                set_module(ctx.layer, t, quantized(lin))
        return rec

    records = sequential(
        model, calibration, on_layer, batch_size=cfg.batch_size, desc="smoothquant"
    )
    notes = list(plan.notes)
    if cfg.w8a8:
        for name in plan.outside:
            set_module(model, name, quantized(chosen[name]))
        if plan.outside:
            notes.append(f"{', '.join(plan.outside)}: outside the decoder layers, not smoothed")
        lm_head = getattr(model, "get_output_embeddings", lambda: None)()
        if lm_head is not None and isinstance(lm_head, quant_cls):
            notes.append(f"lm_head untied from the input embedding, which stays {handle.dtype}")
        notes.append(
            "activations quantized per token at run time (int8 GEMM)"
            if on_cuda
            else "activations quantized per tensor at run time (fbgemm dynamic linear)"
        )
    pairs = [v for r in records for v in r.get("act_absmax", {}).values()]
    if pairs:
        ratio = sum(a / max(b, 1e-30) for a, b in pairs) / len(pairs)
        notes.append(
            f"alpha {cfg.alpha}: {len(pairs)} groups smoothed; max |activation| per group "
            f"reduced {ratio:.1f}x on average (calibration)"
        )
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

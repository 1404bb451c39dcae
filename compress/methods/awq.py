"""`awq`: activation-aware weight quantization (Lin et al. 2023), stored and run as real int4.

Per decoder layer, through the shared sequential loop (compress/calibration/calibrate.py):

    observe   hooks on the layer's linears collect, per input stream (the input a group of
              linears shares): mean |x| per channel over all tokens and H = X^T X / n over a
              random subsample of up to `max_tokens` rows (no activations are kept)
    scale     per group (input_layernorm -> q,k,v; v_proj -> o_proj when shapes allow;
              post_attention/pre_feedforward norm -> gate,up; up_proj -> down_proj, see
              mappings.py): grid-search alpha, s = mean|x|^alpha, minimising the output MSE
              of the group's linears with fake-quantized Q(W * s) / s (numerics/awq.py); fold
              1 / s into the producer (norm weight or producer rows), s into the weights
    clip      per (row, group) shrink of the quantization range minimising output error
              (not q_proj/k_proj, as AutoAWQ: attention logits are sensitive)
    quantize  group-wise int4 (compress.numerics.grid) -> Int4Linear, then the loop recomputes
              the layer's outputs with the quantized weights for the next layer.

Targeted linears outside the decoder layers (lm_head when not ignored) get plain RTN int4.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from compress._config import INT4_GROUP_SIZES, StageBase
from compress.methods.registry import StageContext, StageRecord, register

if TYPE_CHECKING:
    import torch

    from compress.calibration.calibrate import LayerContext
    from compress.calibration.mappings import LayerGroup, Plan

log = logging.getLogger(__name__)


class AWQConfig(StageBase):
    needs_calibration: ClassVar[bool] = True
    method: Literal["awq"] = "awq"
    bits: Literal[4] = 4
    group_size: int = 128
    symmetric: bool = False
    grid: int = Field(20, ge=2, description="alpha grid points in [0, 1)")
    clip: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    batch_size: int = Field(8, ge=1)
    max_tokens: int = Field(
        8192, ge=16, description="calibration rows per input stream sampled for the searches"
    )
    duo_scaling: bool = Field(
        False, description="s = mean|x|^a / mean|w|^(1-a) (AutoAWQ) instead of mean|x|^a"
    )
    max_shrink: float = Field(0.5, gt=0, lt=1, description="largest clipping range reduction")
    seed: int = Field(0, description="row subsampling seed")

    @model_validator(mode="after")
    def _kernel_constraints(self) -> AWQConfig:
        if self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(
                f"group_size must be one of {list(INT4_GROUP_SIZES)} (int4 kernel groups); "
                f"got {self.group_size}"
            )
        return self


class _StreamStats:
    """Running statistics of one input stream, fed by a forward hook."""

    def __init__(self, per_chunk: int, seed: int):
        import torch

        self.per_chunk = per_chunk
        self.gen = torch.Generator().manual_seed(seed)
        self.abs_sum = None
        self.count = 0
        self.h = None
        self.rows = 0

    def __call__(self, _module, x, _out) -> None:
        import torch

        x2 = x.detach().reshape(-1, x.shape[-1]).float()
        s = x2.abs().sum(0)
        self.abs_sum = s if self.abs_sum is None else self.abs_sum + s
        self.count += x2.shape[0]
        if x2.shape[0] > self.per_chunk:
            idx = torch.randperm(x2.shape[0], generator=self.gen)[: self.per_chunk]
            x2 = x2[idx.to(x2.device)]
        g = x2.T @ x2
        self.h = g if self.h is None else self.h + g
        self.rows += x2.shape[0]

    def absmean(self):
        return self.abs_sum / max(self.count, 1)

    def gram(self):
        return self.h / max(self.rows, 1)


def _qargs(cfg: AWQConfig) -> dict:
    """Keyword arguments of the int4 grid shared by the searches and the final quantization."""
    return {"bits": 4, "group_size": cfg.group_size, "symmetric": cfg.symmetric}


def _streams(groups: list[LayerGroup], targets: list[str]) -> tuple[dict[str, str], list[str]]:
    """Input stream of each linear (its group's first linear, else itself) and the sorted keys:
    one stream per group (its linears share the input) + one per ungrouped target."""
    stream_of: dict[str, str] = {}
    for g in groups:
        for name in g.linears:
            stream_of[name] = next(iter(g.linears))
    for t in targets:
        stream_of.setdefault(t, t)
    keys = sorted(set(stream_of[t] for t in targets) | {next(iter(g.linears)) for g in groups})
    return stream_of, keys


def _scale_groups(
    groups: list[LayerGroup], stats: dict[str, _StreamStats], plan: Plan, cfg: AWQConfig, rec: dict
) -> dict[str, torch.Tensor]:
    """Search each group's scales and fold them into producer and weights; the applied scales
    by stream key (groups whose best alpha is 0 are left alone)."""
    from compress.numerics.awq import search_scales
    from compress.numerics.smooth import fold_into_linear_rows, fold_into_norm, scale_input_columns

    scales: dict[str, torch.Tensor] = {}
    for g in groups:
        key = next(iter(g.linears))
        st = stats[key]
        weights = [g.linears[t].weight for t in g.targets]
        res = search_scales(
            weights,
            st.gram(),
            st.absmean(),
            grid=cfg.grid,
            duo_scaling=cfg.duo_scaling,
            **_qargs(cfg),
        )
        rec["alpha"][g.prev_name] = res.alpha
        rec["search_mse"][g.prev_name] = [res.rtn_error, res.error]
        if res.alpha == 0:
            continue
        s = res.scales.to(weights[0].device)
        if g.kind == "norm":
            fold_into_norm(g.prev.weight, s, getattr(g.prev, "bias", None), plan.family.norm_offset)
        else:
            fold_into_linear_rows(g.prev.weight, s, g.prev.bias)
        for lin in g.linears.values():
            scale_input_columns(lin.weight, s)
        scales[key] = s
    return scales


def _quantize_target(
    lctx: LayerContext,
    t: str,
    h: torch.Tensor,
    cfg: AWQConfig,
    no_clip: set[str],
    dtype: torch.dtype,
    rec: dict,
) -> None:
    """Clip (when it lowers the output error) and quantize target `t` to an Int4Linear."""
    import torch

    from compress.errors import ReleaseFailed
    from compress.numerics.awq import search_clip
    from compress.numerics.grid import quantize
    from compress.quant.modules import Int4Linear
    from compress.targets import set_module

    lin = lctx.layer.get_submodule(t)
    w = lin.weight.detach().float()
    if cfg.clip and t not in no_clip:
        cl = search_clip(w, h, grid=cfg.grid, max_shrink=cfg.max_shrink, **_qargs(cfg))
        if cl.applied and cl.error < cl.unclipped_error:
            w = cl.weight
            rec["clipped"].append(t)
    qt = quantize(w, **_qargs(cfg))
    if not (torch.isfinite(qt.scale).all() and torch.isfinite(qt.zero).all()):
        raise ReleaseFailed(f"awq: layer '{lctx.name}.{t}' has non-finite weights or scales.")
    set_module(lctx.layer, t, Int4Linear.from_float(lin, qt, dtype))


def _on_layer(
    lctx: LayerContext,
    plan: Plan,
    cfg: AWQConfig,
    per_chunk: int,
    no_clip: set[str],
    dtype: torch.dtype,
) -> dict:
    """Observe one decoder layer, scale its groups, clip and quantize its targets."""
    groups, targets = plan.groups[lctx.index], plan.targets[lctx.index]
    if not targets:
        return {}
    stream_of, keys = _streams(groups, targets)
    stats = {
        k: _StreamStats(per_chunk, cfg.seed * 100003 + lctx.index * 101 + i)
        for i, k in enumerate(keys)
    }
    lctx.run(stats)
    rec: dict = {"layer": lctx.index, "alpha": {}, "search_mse": {}, "clipped": []}
    scales = _scale_groups(groups, stats, plan, cfg, rec)
    for t in targets:
        key = stream_of[t]
        h = stats[key].gram()
        if key in scales:
            s = scales[key].float()
            h = h / (s[:, None] * s[None, :])
        _quantize_target(lctx, t, h, cfg, no_clip, dtype, rec)
    return rec


def _outside_rtn(ctx: StageContext, cfg: AWQConfig, outside: list[str]) -> list[str]:
    """Plain RTN int4 for the targeted linears outside the decoder layers; its notes."""
    from compress.methods import rtn

    info = rtn.apply(
        ctx,
        rtn.RTNConfig(
            bits=4,
            group_size=cfg.group_size,
            symmetric=cfg.symmetric,
            compute_dtype=cfg.compute_dtype,
            targets=outside,
            ignore=[],
        ),
    )
    notes = [f"{', '.join(outside)}: outside the decoder layers, plain RTN int4"]
    return notes + [n for n in info.notes if "float parts" not in n]


def _search_notes(cfg: AWQConfig, plan: Plan, records: list[dict]) -> list[str]:
    """Notes on the scale search, the clipping and the float parts, from the layer records."""
    notes: list[str] = []
    alphas = [a for r in records for a in r.get("alpha", {}).values()]
    before = sum(v[0] for r in records for v in r.get("search_mse", {}).values())
    after = sum(v[1] for r in records for v in r.get("search_mse", {}).values())
    n_clipped = sum(len(r.get("clipped", [])) for r in records)
    if alphas:
        notes.append(
            f"scale search: mean alpha {sum(alphas) / len(alphas):.2f} over {len(alphas)} groups; "
            f"summed output MSE of the scaled groups {after / max(before, 1e-30):.3f}x RTN's "
            "(before clipping, on the calibration activations)"
        )
    if cfg.clip:
        notes.append(f"clipping kept on {n_clipped} linears (q_proj/k_proj never clipped)")
    notes.append(f"float parts of the model now compute in {cfg.compute_dtype}")
    if plan.family.norm_offset and cfg.compute_dtype != "float32":
        notes.append(
            "(1 + w) norms hold w in " + cfg.compute_dtype + ": a folded (1 + w) / s close to 0 "
            "loses relative precision there"
        )
    return notes


@register(AWQConfig)
def apply(ctx: StageContext, cfg: AWQConfig) -> StageRecord:
    handle, calibration = ctx.model, ctx.calibration()
    import torch

    from compress.calibration.calibrate import require_calibration, sequential
    from compress.calibration.mappings import plan as make_plan
    from compress.quant.modules import weight_only_kernel
    from compress.targets import cast_float_parts, select_linears

    t0 = time.perf_counter()
    model = handle.model
    require_calibration(calibration, "awq", "activations pick the scales")
    chosen = select_linears(model, cfg.targets, cfg.ignore, stage="awq", group_size=cfg.group_size)
    plan = make_plan(model, chosen, stage="awq")
    dtype = getattr(torch, cfg.compute_dtype)
    n_chunks = math.ceil(calibration.input_ids.shape[0] / cfg.batch_size)
    per_chunk = max(1, math.ceil(cfg.max_tokens / n_chunks))
    no_clip = set(plan.family.no_clip)
    on_layer = functools.partial(
        _on_layer, plan=plan, cfg=cfg, per_chunk=per_chunk, no_clip=no_clip, dtype=dtype
    )
    records = sequential(model, calibration, on_layer, batch_size=cfg.batch_size, desc="awq")
    notes = list(plan.notes)
    n_params = sum(m.weight.numel() for m in chosen.values())
    if plan.outside:
        notes += _outside_rtn(ctx, cfg, plan.outside)
    cast_float_parts(model, dtype)
    handle.dtype = cfg.compute_dtype
    notes += _search_notes(cfg, plan, records)
    grid = "symmetric" if cfg.symmetric else "asymmetric (min/max, float zero)"
    return StageRecord.make(
        method="awq",
        summary=f"AWQ int4 {grid}, group {cfg.group_size}, {len(chosen)} Linear layers "
        f"({n_params / 1e6:.1f}M weights), {calibration.input_ids.shape[0]} x "
        f"{calibration.input_ids.shape[1]} calibration tokens",
        layers=len(chosen),
        weights_quantized=n_params,
        kernel=weight_only_kernel(4, handle.device, dtype),
        compute_dtype=cfg.compute_dtype,
        notes=notes,
        seconds=time.perf_counter() - t0,
        per_layer=[r for r in records if r],
    )

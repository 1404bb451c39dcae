"""`structured`: remove whole decoder layers (depth), MLP channels and attention KV groups
(width), chosen by importance measured on calibration data (compress/numerics/structured.py).

The result is a smaller DENSE model with a plain Hugging Face config (`num_hidden_layers`,
`layer_types`, `intermediate_size`, `num_attention_heads`, `num_key_value_heads`, `head_dim`
updated), so its weights bytes and its latency really drop, plain `transformers` reloads the
saved folder, and quantization stages compose after it. Widths are uniform across layers
(one config for every layer). Scores are measured on the unpruned model in one calibration
walk; every layer's score, what was removed and the shapes before and after go into the
record. Distillation (`distill`) is what recovers the quality pruning costs.

On a model streamed from disk (`--max-memory`, compress.stream) the scores come from the same
walk (layers only read), each layer is then loaded, sliced and written in turn, and dropping
layers renumbers the streamed blocks (a kept layer is read from where it was): the weights
are the same as in memory, one layer held at a time.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from compress._config import Strict
from compress.errors import BadInput
from compress.methods.registry import StageContext, StageRecord, register

if TYPE_CHECKING:
    from torch import nn


class StructuredConfig(Strict):
    needs_calibration: ClassVar[bool] = True
    method: Literal["structured"] = "structured"
    layers: float | list[int] | None = Field(
        None,
        description="decoder layers to drop: a fraction (0-1) chosen by score, or explicit "
        "indices (negative counts from the end)",
    )
    protect: list[int] = Field(
        [0, -1], description="layers never dropped by score (default: the first and the last)"
    )
    mlp: float | None = Field(
        None, gt=0, lt=1, description="fraction of MLP intermediate channels removed per layer"
    )
    mlp_multiple: int = Field(32, ge=1, description="channels are removed in steps of this")
    heads: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="fraction of KV groups removed per layer, each with its query heads; must "
        "be a whole number of groups (e.g. 1/3 of 3 groups)",
    )
    batch_size: int = Field(8, ge=1, description="calibration samples per forward")
    samples: int | None = Field(
        None,
        ge=1,
        description="score on the first N calibration samples only (null: all of them); "
        "layer and channel scores settle on far fewer tokens than GPTQ's Hessians need",
    )

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: float | list[int] | None) -> float | list[int] | None:
        if isinstance(v, float) and not 0 < v < 1:
            raise ValueError(f"a fraction of layers must be between 0 and 1 (exclusive); got {v}")
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("a list of layers must name each layer once, and at least one")
        return v

    @model_validator(mode="after")
    def _something(self) -> StructuredConfig:
        if self.layers is None and self.mlp is None and self.heads is None:
            raise ValueError("set at least one of layers, mlp, heads (what to remove)")
        return self


def _fail(msg: str, fix: str | None = None) -> BadInput:
    return BadInput(f"structured: {msg}", fix=fix)


def _parts(layer: nn.Module, names: tuple[str, ...], what: str) -> list[nn.Module]:
    try:
        return [layer.get_submodule(n) for n in names]
    except AttributeError:
        raise _fail(
            f"{what} pruning needs {', '.join(names)} in every decoder layer "
            f"({type(layer).__name__} lacks one).",
            fix="Use depth pruning (layers:) only for this architecture.",
        ) from None


MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")


def model_shape(model: nn.Module) -> dict[str, Any]:
    c = model.config
    heads = c.num_attention_heads
    return {
        "layers": c.num_hidden_layers,
        "intermediate_size": c.intermediate_size,
        "num_attention_heads": heads,
        "num_key_value_heads": getattr(c, "num_key_value_heads", None) or heads,
        "head_dim": getattr(c, "head_dim", None) or c.hidden_size // heads,
    }


def removal_plan(cfg: StructuredConfig, shape: dict[str, Any]) -> dict[str, Any]:
    """Counts to remove, checked against the model before anything runs (BadInput)."""
    from compress.numerics.structured import count

    n = shape["layers"]
    plan: dict[str, Any] = {}
    if isinstance(cfg.layers, list):
        bad = [i for i in cfg.layers if not -n <= i < n]
        if bad:
            raise _fail(f"layers {bad} do not exist: the model has {n} (0 to {n - 1}).")
        plan["drop"] = sorted(i % n for i in cfg.layers)
        if len(plan["drop"]) >= n:
            raise _fail(f"dropping all {n} layers leaves no model.")
    elif cfg.layers is not None:
        protect = {i % n for i in cfg.protect if -n <= i < n}
        try:
            plan["n_drop"] = count(n, cfg.layers)
        except ValueError as e:
            raise _fail(f"layers: {e}.") from None
        if plan["n_drop"] > n - len(protect):
            raise _fail(f"layers {cfg.layers} drops {plan['n_drop']} of {n} with {protect} kept.")
        plan["protect"] = tuple(sorted(protect))
    if cfg.mlp is not None:
        try:
            plan["mlp_remove"] = count(shape["intermediate_size"], cfg.mlp, cfg.mlp_multiple)
        except ValueError as e:
            raise _fail(f"mlp: {e}.", fix="Lower mlp_multiple or change mlp.") from None
    if cfg.heads is not None:
        groups = shape["num_key_value_heads"]
        exact = groups * cfg.heads
        if abs(exact - round(exact)) > 1e-6 or not 0 < round(exact) < groups:
            options = ", ".join(f"{k}/{groups}" for k in range(1, groups))
            raise _fail(
                f"heads {cfg.heads} of {groups} KV groups is {exact:g} groups: grouped-query "
                f"attention is pruned a whole group at a time.",
                fix=f"Use one of {options or 'none: a single group cannot be pruned'}.",
            )
        plan["groups_remove"] = round(exact)
    return plan


def shape_after(plan: dict[str, Any], shape: dict[str, Any]) -> dict[str, Any]:
    """The shape once `plan` is carried out: widths are uniform across layers and the counts do
    not depend on the scores, so this is exact before anything runs."""
    after = dict(shape)
    if "mlp_remove" in plan:
        after["intermediate_size"] -= plan["mlp_remove"]
    if "groups_remove" in plan:
        per_group = shape["num_attention_heads"] // shape["num_key_value_heads"]
        after["num_key_value_heads"] -= plan["groups_remove"]
        after["num_attention_heads"] = after["num_key_value_heads"] * per_group
    after["layers"] -= len(plan.get("drop", ())) + plan.get("n_drop", 0)
    return after


def _score(handle, cfg: StructuredConfig, calib, plan: dict[str, Any], shape: dict) -> dict:
    """One walk over the unpruned model: per layer its angular distance and the squared
    activations entering down_proj and o_proj."""
    import torch

    from compress.calibration.calibrate import sequential
    from compress.numerics.structured import angular_distance

    width = "mlp_remove" in plan or "groups_remove" in plan

    def on_layer(ctx) -> dict[str, Any]:
        sums: dict[str, torch.Tensor] = {}

        def hook(key: str):
            def fn(_m, x, _out):
                s = x.detach().double().pow(2).reshape(-1, x.shape[-1]).sum(0)
                sums[key] = sums[key] + s if key in sums else s

            return fn

        hooks = {}
        if "mlp_remove" in plan:
            hooks[MLP[2]] = hook("mlp")
        if "groups_remove" in plan:
            hooks[ATTN[3]] = hook("attn")
        outs = ctx.run(hooks) if (width or "n_drop" in plan) else []
        total, tokens = 0.0, 0
        for x, y in zip(ctx.inputs, outs, strict=False):
            s, t = angular_distance(x, y)
            total, tokens = total + s, tokens + t
        return {"angular": total / max(tokens, 1), **sums}

    with torch.no_grad():
        return sequential(
            handle.model,
            calib,
            on_layer,
            batch_size=cfg.batch_size,
            desc="structured scores",
            writes=False,  # scoring changes nothing: a streamed layer is only emptied
        )


def _slice(lin: nn.Linear, rows: list[int] | None = None, cols: list[int] | None = None):
    import torch
    from torch import nn

    w = lin.weight.data
    w = w[rows] if rows is not None else w
    w = w[:, cols] if cols is not None else w
    bias = lin.bias is not None
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias:
            new.bias.copy_(lin.bias.data[rows] if rows is not None else lin.bias.data)
    return new


def _set(layer: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(layer.get_submodule(parent), attr, module)


def _prune_mlp(layer: nn.Module, rec: dict, remove: int) -> None:
    """Keep the MLP channels with the highest scores (gate/up rows, down columns)."""
    from compress.numerics.structured import column_scores, keep_top

    gate, up, down = _parts(layer, MLP, "MLP width")
    keep = keep_top(column_scores(rec["mlp"], down.weight.data), down.in_features - remove)
    _set(layer, MLP[0], _slice(gate, rows=keep))
    _set(layer, MLP[1], _slice(up, rows=keep))
    _set(layer, MLP[2], _slice(down, cols=keep))


def _prune_heads(layer: nn.Module, rec: dict, remove: int, shape: dict) -> list[int]:
    """Keep the KV groups with the highest scores, each with its query heads; returns them."""
    from compress.numerics.structured import group_scores, keep_top

    d, groups = shape["head_dim"], shape["num_key_value_heads"]
    per_group = shape["num_attention_heads"] // groups
    q, k, v, o = _parts(layer, ATTN, "attention head")
    keep = keep_top(group_scores(rec["attn"], o.weight.data, d, groups), groups - remove)
    q_cols = [g * per_group * d + j for g in keep for j in range(per_group * d)]
    kv_rows = [g * d + j for g in keep for j in range(d)]
    _set(layer, ATTN[0], _slice(q, rows=q_cols))
    _set(layer, ATTN[1], _slice(k, rows=kv_rows))
    _set(layer, ATTN[2], _slice(v, rows=kv_rows))
    _set(layer, ATTN[3], _slice(o, cols=q_cols))
    return keep


def _prune_width(model: nn.Module, records: list[dict], plan: dict, before: dict) -> dict:
    """Slice every layer's MLP and attention (one layer held at a time when streamed) and
    update the config; returns the record's details."""
    from compress.stream.walk import layers_one_by_one

    kept: list[list[int]] = []
    for layer, rec in zip(layers_one_by_one(model), records, strict=True):
        if "mlp_remove" in plan:
            _prune_mlp(layer, rec, plan["mlp_remove"])
        if "groups_remove" in plan:
            kept.append(_prune_heads(layer, rec, plan["groups_remove"], before))
    cfg, after = model.config, shape_after(plan, before)
    if "mlp_remove" in plan:
        cfg.intermediate_size = after["intermediate_size"]
    if not kept:
        return {}
    cfg.num_key_value_heads = after["num_key_value_heads"]
    cfg.num_attention_heads = after["num_attention_heads"]
    cfg.head_dim = before["head_dim"]
    return {"kept_kv_groups": kept}


def _drop_layers(model: nn.Module, drop: list[int]) -> list[int]:
    """Remove decoder layers `drop`; renumber the rest (KV-cache slots, the config, and for a
    model streamed from disk its blocks, read from where they were)."""
    from torch import nn

    from compress.calibration.calibrate import decoder_layers
    from compress.stream.model import of

    prefix, layers = decoder_layers(model)
    kept = [i for i in range(len(layers)) if i not in set(drop)]
    parent, _, attr = prefix.rpartition(".")
    setattr(model.get_submodule(parent), attr, nn.ModuleList([layers[i] for i in kept]))
    for new, i in enumerate(kept):
        for m in layers[i].modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new
    cfg = model.config
    cfg.num_hidden_layers = len(kept)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i in kept]
    if of(model) is not None:
        of(model).renumber(kept)
    return kept


@register(StructuredConfig)
def apply(ctx: StageContext, cfg: StructuredConfig) -> StageRecord:
    from compress.calibration.calibrate import require_calibration
    from compress.numerics.structured import layers_to_drop

    t0 = time.perf_counter()
    model = ctx.model.model
    calib = require_calibration(ctx.calibration(), "structured", "importance scores")
    if cfg.samples is not None and cfg.samples < calib.input_ids.shape[0]:
        calib = dataclasses.replace(calib, input_ids=calib.input_ids[: cfg.samples])
    before = model_shape(model)
    plan = removal_plan(cfg, before)
    records = _score(ctx.model, cfg, calib, plan, before)
    scores = [float(r["angular"]) for r in records]
    details: dict[str, Any] = {"shape_before": before, "layer_scores": scores}
    if "mlp_remove" in plan or "groups_remove" in plan:
        details.update(_prune_width(model, records, plan, before))
    drop = plan.get("drop") or (
        layers_to_drop(scores, plan["n_drop"], plan["protect"]) if "n_drop" in plan else []
    )
    details["dropped_layers"] = drop
    details["kept_layers"] = _drop_layers(model, drop) if drop else list(range(before["layers"]))
    after = model_shape(model)
    details["shape_after"] = after
    summary = ", ".join(f"{k} {before[k]} -> {after[k]}" for k in before if before[k] != after[k])
    return StageRecord.make(
        method="structured",
        summary=f"structured: {summary}",
        kernel="dense float matmuls on smaller matrices",
        saves_time=True,
        notes=[
            f"layer scores: angular distance between a layer's input and output on "
            f"{calib.input_ids.shape[0]} calibration samples of {calib.input_ids.shape[1]} "
            f"tokens (lower = less change = dropped first); dropped {drop or 'none'}"
        ],
        seconds=time.perf_counter() - t0,
        config=cfg.model_dump(),
        **details,
    )

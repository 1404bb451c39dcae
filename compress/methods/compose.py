"""Checks across one variant's stages, made before any stage runs.

A `structured` stage changes widths (the MLP's intermediate size: down_proj's input; the
attention heads: o_proj's input) that a later quantization stage's group size must divide.
Each stage checks its own input when it runs, so a structured -> distill -> gptq recipe with
a mismatch would otherwise find out at the gptq stage, after the pruning and the training.
Widths after structured are known from the config alone (they are uniform across layers and
the counts do not depend on the scores), so this check is exact.
"""

from __future__ import annotations

from typing import Any

from compress.errors import BadInput


def _after(cfg: Any, shape: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """The shape after structured stage `cfg`, and {Linear name suffix: in_features} it sets."""
    from compress.methods.structured import ATTN, MLP, removal_plan, shape_after

    plan = removal_plan(cfg, shape)  # BadInput for an impossible plan
    after = shape_after(plan, shape)
    widths = {}
    if "mlp_remove" in plan:
        widths[MLP[2]] = after["intermediate_size"]
    if "groups_remove" in plan:
        widths[ATTN[3]] = after["num_attention_heads"] * after["head_dim"]
    return after, widths


def check_widths(model: Any, stages: list[Any], where: str) -> None:
    """BadInput when a stage's group_size does not divide an input width that an earlier
    structured stage of the same variant leaves; `where` is the stages' field path."""
    from compress.methods.structured import StructuredConfig, model_shape
    from compress.targets import linears

    if not any(isinstance(s, StructuredConfig) for s in stages):
        return
    shape = model_shape(model)
    changed: dict[str, tuple[int, int]] = {}  # suffix -> (in_features, structured stage index)
    for i, stage in enumerate(stages):
        if isinstance(stage, StructuredConfig):
            try:
                shape, widths = _after(stage, shape)
            except BadInput:  # the stage refuses its own plan when it runs, naming itself
                return
            changed.update({k: (w, i) for k, w in widths.items()})
            continue
        g = getattr(stage, "group_size", None)
        if not changed or not g or g <= 0 or not hasattr(stage, "targets"):
            continue
        names = linears(model, stage.targets, stage.ignore, stage=f"{where}.{i}")
        for suffix, (width, k) in changed.items():
            if width % g == 0 or not any(n.endswith("." + suffix) for n in names):
                continue
            knob = "mlp_multiple" if suffix.startswith("mlp.") else "heads"
            raise BadInput(
                f"{where}.{i}.group_size {g} does not divide the {width} input features "
                f"{suffix} will have after {where}.{k} (structured).",
                fix=f"Set {where}.{k}.{knob} so that the width left is a multiple of {g}, "
                f"pick a group size that divides {width}, or ignore {suffix}.",
            )

"""`wanda`: prune by |W_ij| * ||X_j||_2 (Sun et al. 2023), compared within each output row.

Through the shared sequential loop (calibration/calibrate.py) and per-group statistics
(calibration/layerwise.py): each Linear's input feature norms are collected on the layer's real
inputs, the layer is pruned, and its outputs are recomputed pruned for the next layer. One
pass per layer by default, as the reference; `true_sequential` collects each group's norms
after the earlier groups of the layer are pruned. No weight update: masks only.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

from pydantic import Field

from compress.methods._pruning import PruneBase
from compress.methods.registry import StageContext, StageRecord, register


class WandaConfig(PruneBase):
    needs_calibration: ClassVar[bool] = True
    method: Literal["wanda"] = "wanda"
    batch_size: int = Field(8, ge=1, description="calibration samples per forward")
    true_sequential: bool = False


@register(WandaConfig)
def apply(ctx: StageContext, cfg: WandaConfig) -> StageRecord:
    handle, calibration = ctx.model, ctx.calibration()
    import torch

    from compress.calibration import layerwise
    from compress.methods._pruning import calibrated, record
    from compress.numerics.masks import prune_mask, wanda_scores

    t0 = time.perf_counter()

    def prune_group(ctx, names, sq, n_rows):
        layerwise.check_inputs(f"{ctx.name}.{names[0]}", sq, n_rows, "wanda")
        with torch.no_grad():
            for sub in names:
                w = ctx.layer.get_submodule(sub).weight
                w.masked_fill_(prune_mask(wanda_scores(w, sq), cfg.sparsity, cfg.nm), 0)

    chosen, per_layer, counted = calibrated(
        handle,
        cfg,
        calibration,
        "wanda",
        "input feature norms to score the weights",
        prune_group,
        layerwise.square_sum_update,
    )
    return record(
        "wanda",
        cfg,
        chosen,
        handle.device,
        time.perf_counter() - t0,
        counted=counted,
        per_layer_seconds=per_layer,
    )

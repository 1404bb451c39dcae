"""`magnitude`: prune the smallest |w| of each row (unstructured or N:M). No calibration data:
the baseline that Wanda and SparseGPT must beat."""

from __future__ import annotations

import time
from typing import Literal

from compress.methods._pruning import PruneBase
from compress.methods.registry import StageContext, StageRecord, register


class MagnitudeConfig(PruneBase):
    method: Literal["magnitude"] = "magnitude"


@register(MagnitudeConfig)
def apply(ctx: StageContext, cfg: MagnitudeConfig) -> StageRecord:
    handle = ctx.model
    import torch

    from compress.methods._pruning import count, prunable, record
    from compress.numerics.masks import prune_mask, wanda_scores
    from compress.stream.walk import linears_layer_by_layer

    t0 = time.perf_counter()
    chosen = prunable(handle, cfg, "magnitude")
    counted = {}  # counted as each Linear is pruned: a streamed layer is gone afterwards
    with torch.no_grad():
        for name, lin in linears_layer_by_layer(handle.model, chosen, "magnitude"):
            lin.weight.masked_fill_(prune_mask(wanda_scores(lin.weight), cfg.sparsity, cfg.nm), 0)
            counted[name] = count(lin, cfg)
    return record("magnitude", cfg, chosen, handle.device, time.perf_counter() - t0, counted)

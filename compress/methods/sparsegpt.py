"""`sparsegpt`: prune with second-order weight updates (Frantar & Alistarh 2023).

Hessians H = 2/n sum x^T x are accumulated per group of Linears that share an input, through
the shared sequential loop (calibration/calibrate.py) and per-group statistics
(calibration/layerwise.py), exactly as for GPTQ; the solve (numerics/sparsegpt.py) chooses the mask
by OBS saliency and updates the remaining weights to compensate. Outputs are recomputed with
the pruned weights before the next layer.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

from pydantic import Field

from compress.methods._pruning import PruneBase
from compress.methods.registry import StageContext, StageRecord, register


class SparseGPTConfig(PruneBase):
    needs_calibration: ClassVar[bool] = True
    method: Literal["sparsegpt"] = "sparsegpt"
    damp: float = Field(0.01, gt=0, le=1, description="fraction of mean diag(H) added")
    block_size: int = Field(128, ge=1)
    batch_size: int = Field(8, ge=1, description="calibration samples per forward")
    true_sequential: bool = True


@register(SparseGPTConfig)
def apply(ctx: StageContext, cfg: SparseGPTConfig) -> StageRecord:
    handle, calibration = ctx.model, ctx.calibration()
    import torch

    from compress.calibration import layerwise
    from compress.errors import ReleaseFailed, StageFailed
    from compress.methods._pruning import calibrated, record
    from compress.numerics.hessian import hessian_update, output_energy
    from compress.numerics.sparsegpt import sparsegpt_prune

    t0 = time.perf_counter()
    errors: dict[str, float] = {}

    def prune_group(ctx, names, H, n_rows):
        mods = [ctx.layer.get_submodule(s) for s in names]
        full = [f"{ctx.name}.{s}" for s in names]
        layerwise.check_inputs(full[0], H, n_rows, "sparsegpt")
        for m, name in zip(mods, full, strict=True):  # one solve per Linear, as the reference:
            W = m.weight.detach().float()  # each meets its sparsity on its own
            try:
                W_new, _, row_err = sparsegpt_prune(
                    W, H, cfg.sparsity, cfg.nm, cfg.block_size, cfg.damp
                )
            except ValueError as e:
                raise StageFailed(f"sparsegpt: layer '{name}' failed: {e}.") from None
            if not torch.isfinite(W_new).all():
                raise ReleaseFailed(f"sparsegpt: layer '{name}' has non-finite weights.")
            errors[name] = float(row_err.sum() / output_energy(W, H).sum().clamp(min=1e-30))
            with torch.no_grad():
                m.weight.copy_(W_new.to(m.weight.dtype))

    chosen, per_layer, counted = calibrated(
        handle,
        cfg,
        calibration,
        "sparsegpt",
        "layer inputs to build its Hessians",
        prune_group,
        hessian_update,
    )
    return record(
        "sparsegpt",
        cfg,
        chosen,
        handle.device,
        time.perf_counter() - t0,
        counted=counted,
        output_error=layerwise.error_summary(
            errors, "relative layer output error ||X(W - W_p)^T||^2 / ||X W^T||^2 on calibration"
        ),
        per_layer_seconds=per_layer,
    )

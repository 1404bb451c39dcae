"""What the pruning methods (magnitude, wanda, sparsegpt) share: the config fields, the
pre-flight check of the layers, and the honest record of what pruning did and did not save.

Pruned weights are zeros inside ordinary dense float tensors: on its own a pruning stage
saves no memory and no time here (no sparse kernel runs them), and the record says so. Follow
it with gptq (`preserve_zeros: true`, symmetric) to keep the zeros through int4 storage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from compress._config import StageBase
from compress.methods.registry import StageRecord

if TYPE_CHECKING:
    from torch import nn

    from compress.calibration.calibrate import CalibrationData
    from compress.handle import ModelHandle


class PruneBase(StageBase):
    sparsity: float | None = Field(
        0.5,
        ge=0,
        lt=1,
        description="fraction of each targeted layer's weights set to 0 (unstructured); with "
        "an N:M structure it is 1 - N/M and may be left out",
    )
    mask_structure: str = Field(
        "unstructured",
        description="'unstructured' or 'N:M': keep N weights in every M consecutive inputs of "
        "a row (2:4 is what sparse tensor cores run)",
    )
    compute_dtype: Literal["bfloat16", "float16", "float32"] | None = Field(
        None, description="cast the model's float parts first; null = keep its dtype"
    )

    @field_validator("mask_structure")
    @classmethod
    def _known_structure(cls, v: str) -> str:
        from compress.numerics.masks import parse_structure

        parse_structure(v)  # ValueError names the expected forms
        return v

    @model_validator(mode="after")
    def _structure(self) -> PruneBase:
        nm = self.nm
        given = "sparsity" in self.model_fields_set and self.sparsity is not None
        if nm is not None and given and abs(self.sparsity - (1 - nm[0] / nm[1])) > 1e-9:
            raise ValueError(
                f"mask_structure {self.mask_structure} prunes {1 - nm[0] / nm[1]:g} of the "
                f"weights; sparsity {self.sparsity} contradicts it (leave sparsity out)"
            )
        return self

    @property
    def nm(self) -> tuple[int, int] | None:
        from compress.numerics.masks import parse_structure

        return parse_structure(self.mask_structure)

    @property
    def target_sparsity(self) -> float:
        from compress.numerics.masks import structure_sparsity

        return structure_sparsity(self.mask_structure, self.sparsity)

    def describe(self) -> str:
        if self.nm is not None:
            return f"{self.mask_structure} ({100 * self.target_sparsity:.0f}% zero)"
        return f"{100 * self.target_sparsity:.0f}% unstructured"


def prunable(handle: ModelHandle, cfg: PruneBase, stage: str) -> dict[str, nn.Linear]:
    """The targeted Linears, checked before anything changes: an N:M structure needs M to
    divide every layer's input features; weights must be finite. Then the compute_dtype cast."""
    import torch

    from compress.targets import cast_float_parts, select_linears

    model = handle.model
    nm = cfg.nm
    divisor = None
    if nm is not None:
        divisor = (
            f"mask_structure {cfg.mask_structure} (runs of {nm[1]} inputs)",
            nm[1],
            "Add those layers to ignore or pick another structure.",
        )
    chosen = select_linears(model, cfg.targets, cfg.ignore, stage=stage, divisor=divisor)
    if cfg.compute_dtype:
        cast_float_parts(model, getattr(torch, cfg.compute_dtype))
        handle.dtype = cfg.compute_dtype
    return chosen


def calibrated(
    handle: ModelHandle,
    cfg: PruneBase,
    calibration: CalibrationData | None,
    stage: str,
    why: str,
    solve: Callable[..., None],
    update: Callable[..., Any],
) -> tuple[dict[str, nn.Linear], list[float]]:
    """A calibrated pruner's whole walk, in order: the calibration guard and the target
    pre-flight (before anything changes), then `solve` per group of every decoder layer on
    the `update` statistic (calibration/layerwise.py). Returns (targeted Linears, s per layer)."""
    from compress.calibration import layerwise
    from compress.calibration.calibrate import require_calibration

    require_calibration(calibration, stage, why)
    chosen = prunable(handle, cfg, stage)
    per_layer = layerwise.run(
        handle.model,
        calibration,
        layerwise.by_decoder_layer(handle.model, chosen, stage),
        solve,
        update,
        true_sequential=cfg.true_sequential,
        batch_size=cfg.batch_size,
        desc=f"{stage} {cfg.describe()}",
    )
    return chosen, per_layer


def record(
    method: str,
    cfg: PruneBase,
    chosen: dict[str, nn.Linear],
    device: str,
    seconds: float,
    **extra,
) -> StageRecord:
    """The stage record: sparsity reached (counted on the weights), and in words what it saves."""
    zeros = sum(int((m.weight == 0).sum()) for m in chosen.values())
    total = sum(m.weight.numel() for m in chosen.values())
    notes = [
        f"{100 * zeros / total:.1f}% of the {total / 1e6:.1f}M targeted weights are now exactly 0",
        f"pruned weights are stored dense (zeros in float tensors): this stage alone saves no "
        f"memory and no time on {device} (no sparse kernel runs them); a later gptq stage with "
        "preserve_zeros keeps them 0 in int4 storage",
    ]
    if cfg.nm is not None:
        notes.append(
            f"every row keeps {cfg.nm[0]} of each {cfg.nm[1]} consecutive inputs"
            + (
                " (the pattern NVIDIA sparse tensor cores accelerate; not used here)"
                if cfg.nm == (2, 4)
                else ""
            )
        )
    dtype = cfg.compute_dtype
    if dtype:
        notes.append(f"float parts of the model now compute in {dtype}")
    return StageRecord.make(
        method=method,
        summary=f"{method} {cfg.describe()}, {len(chosen)} Linear layers "
        f"({total / 1e6:.1f}M weights, {100 * zeros / total:.1f}% zero)",
        saves_time=False,
        layers=len(chosen),
        weights_pruned=zeros,
        sparsity=zeros / total,
        target_sparsity=cfg.target_sparsity,
        mask_structure=cfg.mask_structure,
        compute_dtype=dtype or None,
        notes=notes,
        seconds=seconds,
        **extra,
    )

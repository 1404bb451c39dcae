"""What the pruning methods (magnitude, wanda, sparsegpt) share: the config fields, the
pre-flight check of the layers, and the honest record of what pruning did and did not save.

Pruned weights are zeros inside ordinary dense float tensors: on its own a pruning stage
saves no memory and no time here (no sparse kernel runs them), and the record says so. Follow
it with gptq (`preserve_zeros: true`, symmetric) to keep the zeros through int4 storage.

The record counts, it does not repeat the config: sparsity and pattern are measured on each
layer's weights (`per_layer`, `sparsity`, `pattern_measured`), and `sparse_kernel` says whether
any kernel on the device runs the pattern (only 2:4, as torch's semi-structured sparse tensors
on CUDA; `compress.profile.sparse_kernels`, tried by the kernel choice before profiling).
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
) -> tuple[dict[str, nn.Linear], list[float], dict[str, dict[str, Any]]]:
    """A calibrated pruner's whole walk, in order: the calibration guard and the target
    pre-flight (before anything changes), then `solve` per group of every decoder layer on
    the `update` statistic (calibration/layerwise.py). Returns (targeted Linears, s per layer,
    each targeted Linear's zeros and pattern counted as its layer finished: a model streamed
    from disk no longer holds the weights at the end)."""
    from compress.calibration import layerwise
    from compress.calibration.calibrate import require_calibration

    require_calibration(calibration, stage, why)
    chosen = prunable(handle, cfg, stage)
    counted: dict[str, dict[str, Any]] = {}

    def count_layer(lctx) -> None:
        head = lctx.name + "."
        for name in chosen:
            if name.startswith(head):
                counted[name] = count(lctx.layer.get_submodule(name[len(head) :]), cfg)

    per_layer = layerwise.run(
        handle.model,
        calibration,
        layerwise.by_decoder_layer(handle.model, chosen, stage),
        solve,
        update,
        true_sequential=cfg.true_sequential,
        batch_size=cfg.batch_size,
        desc=f"{stage} {cfg.describe()}",
        after_layer=count_layer,
    )
    return chosen, per_layer, counted


def count(lin: nn.Linear, cfg: PruneBase) -> dict[str, Any]:
    """One Linear's zeros and pattern as `record` reports them."""
    return _count(lin, _candidates(cfg))


def _candidates(cfg: PruneBase) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*([cfg.mask_structure] if cfg.nm else []), "2:4", "4:8"]))


def record(
    method: str,
    cfg: PruneBase,
    chosen: dict[str, nn.Linear],
    device: str,
    seconds: float,
    counted: dict[str, dict[str, Any]] | None = None,
    **extra,
) -> StageRecord:
    """The stage record: sparsity reached and the pattern present, counted on the weights per
    layer and overall (not the requested figures), whether a kernel on `device` runs that
    pattern, and in words what it saves."""
    from compress.numerics.sparsity import overall_pattern

    candidates = _candidates(cfg)
    per_layer, two_four = _per_layer(chosen, candidates, counted)
    zeros = sum(p["zeros"] for p in per_layer.values())
    total = sum(p["weights"] for p in per_layer.values())
    measured = zeros / total
    pattern = overall_pattern([p["pattern"] for p in per_layer.values()], candidates)
    wdtype = next(iter(chosen.values())).weight.dtype
    kernel_ok, sparse_kernel = _sparse_kernel(device, wdtype, pattern, two_four, len(chosen))
    notes = [
        f"{100 * measured:.1f}% of the {total / 1e6:.1f}M targeted weights are now exactly 0 "
        f"(measured pattern: {pattern})",
        f"pruned weights are stored dense (zeros in float tensors): this stage alone saves no "
        f"memory and no time on {device} ("
        + (
            "the kernel choice before profiling may run them sparse, see sparse_kernel"
            if kernel_ok
            else "no sparse kernel runs them"
        )
        + "); a later gptq stage with preserve_zeros keeps them 0 in int4 storage",
        f"sparse kernel: {sparse_kernel}",
    ]
    target = cfg.target_sparsity
    notes += _pattern_notes(cfg, per_layer, measured, kernel_ok)
    dtype = cfg.compute_dtype
    if dtype:
        notes.append(f"float parts of the model now compute in {dtype}")
    return StageRecord.make(
        method=method,
        summary=f"{method} {cfg.describe()}, {len(chosen)} Linear layers "
        f"({total / 1e6:.1f}M weights, {100 * measured:.1f}% zero, {pattern})",
        saves_time=False,
        layers=len(chosen),
        weights_pruned=zeros,
        sparsity=measured,
        target_sparsity=target,
        mask_structure=cfg.mask_structure,
        pattern_measured=pattern,
        sparse_kernel=sparse_kernel,
        per_layer=per_layer,
        compute_dtype=dtype or None,
        notes=notes,
        seconds=seconds,
        **extra,
    )


def _per_layer(
    chosen: dict[str, nn.Linear],
    candidates: tuple[str, ...],
    counted: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, dict[str, Any]], int]:
    """Per layer the zeros, weights, sparsity and pattern counted on its weight (or as
    `counted` during the walk); and how many layers are exactly 2:4."""
    counted = counted or {}
    per_layer = {n: dict(counted.get(n) or _count(m, candidates)) for n, m in chosen.items()}
    two_four = sum(p.pop("two_four") for p in per_layer.values())
    return per_layer, two_four


def _count(m: nn.Linear, candidates: tuple[str, ...]) -> dict[str, Any]:
    from compress.numerics.sparsity import detect_pattern, satisfies, zero_count

    z, n = zero_count(m.weight), m.weight.numel()
    pattern = detect_pattern(m.weight, candidates)
    return {"sparsity": z / n, "zeros": z, "weights": n, "pattern": pattern,
            "two_four": bool(satisfies(m.weight, 2, 4))}  # fmt: skip


def _pattern_notes(
    cfg: PruneBase, per_layer: dict[str, dict[str, Any]], measured: float, kernel_ok: bool
) -> list[str]:
    """Where the measured sparsity or pattern is not what was asked, and what an N:M
    pattern keeps per row."""
    notes = []
    target = cfg.target_sparsity
    if abs(measured - target) > 0.005:
        lo = min(p["sparsity"] for p in per_layer.values())
        hi = max(p["sparsity"] for p in per_layer.values())
        notes.append(
            f"measured sparsity {100 * measured:.1f}% differs from the requested "
            f"{100 * target:.1f}% by {100 * abs(measured - target):.1f} points (per layer "
            f"{100 * lo:.1f}% to {100 * hi:.1f}%): zeros already in the weights add to it, "
            "rounding of the per-row count takes from it"
        )
    if cfg.nm is None:
        return notes
    notes.append(
        f"every row keeps {cfg.nm[0]} of each {cfg.nm[1]} consecutive inputs"
        + (
            " (the pattern NVIDIA sparse tensor cores accelerate; "
            + ("tried by the kernel choice)" if kernel_ok else "not used here)")
            if cfg.nm == (2, 4)
            else ""
        )
    )
    off = [n for n, p in per_layer.items() if p["pattern"] != cfg.mask_structure]
    if off:
        notes.append(
            f"the requested {cfg.mask_structure} pattern is NOT what {len(off)} of "
            f"{len(per_layer)} layers hold (first: {off[0]}, {per_layer[off[0]]['pattern']})"
        )
    return notes


def _sparse_kernel(device: str, dtype: Any, pattern: str, two_four: int, layers: int):
    """(whether a kernel on `device` runs the zeros, the statement): only 2:4 has one, torch's
    semi-structured sparse tensors on CUDA (compute capability >= 8.0, float16 / bfloat16)."""
    from compress.profile.sparse_kernels import semi_structured_support

    if not two_four:
        return False, (
            f"none: no kernel on {device} runs {pattern} sparsity (torch runs only 2:4, on "
            "CUDA); the zeros are multiplied like any weight"
        )
    ok, why = semi_structured_support(device, dtype)
    part = "" if two_four == layers else f" ({two_four} of {layers} layers are 2:4)"
    if not ok:
        return False, f"none: {why}{part}"
    return True, (
        f"available: {why}{part}; this stage leaves the weights dense, the kernel choice "
        "before profiling times the 2:4 layers as semi-structured sparse tensors (while they "
        "are still float Linears: not after a quantizing stage)"
    )

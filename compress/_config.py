"""Base classes shared by recipe and method configs (pure pydantic, no torch)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Config is data: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: group sizes the int4 kernels take (CPU `_weight_int4pack_mm_for_cpu`, CUDA tinygemm)
INT4_GROUP_SIZES = (32, 64, 128, 256)


def check_weight_grid(bits: int, group_size: int | None, symmetric: bool) -> None:
    """The grids our kernels run, for every weight-only method (ValueError otherwise):
    8 bits per output channel, symmetric (the int8 kernel); 2/3/4 bits in int4 containers with
    a kernel group size, or per channel (scales repeated over the largest kernel group that
    divides each layer's input features, checked per layer when the stage runs)."""
    if bits == 8 and (group_size is not None or not symmetric):
        raise ValueError(
            "bits 8 runs on the per-channel symmetric int8 kernel: set group_size: null "
            "and symmetric: true"
        )
    if bits <= 4 and group_size is not None and group_size not in INT4_GROUP_SIZES:
        raise ValueError(
            f"bits {bits} is stored for the int4 kernel: group_size must be one of "
            f"{list(INT4_GROUP_SIZES)} or null (per channel); got {group_size}"
        )


class StageBase(Strict):
    """What every stage shares: which modules it touches.

    `targets` and `ignore` entries are a module class name (`Linear`), an exact module name
    (`lm_head`, `model.layers.0.mlp.down_proj`) or a regex on the module name (`re:.*mlp.*`).
    """

    targets: list[str] = Field(default_factory=lambda: ["Linear"], min_length=1)
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"])

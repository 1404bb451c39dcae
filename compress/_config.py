"""Base classes shared by recipe and method configs (pure pydantic, no torch)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Config is data: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StageBase(Strict):
    """What every stage shares: which modules it touches.

    `targets` and `ignore` entries are a module class name (`Linear`), an exact module name
    (`lm_head`, `model.layers.0.mlp.down_proj`) or a regex on the module name (`re:.*mlp.*`).
    """

    targets: list[str] = Field(default_factory=lambda: ["Linear"], min_length=1)
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"])

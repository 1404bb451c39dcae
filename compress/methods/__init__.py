"""Compression methods, one module each, found and registered at import.

Every module here that is not shared plumbing (`registry`, or a name starting with `_`) is a
method, one file each: it defines its config and registers its `apply` with
`@register(Config)` (see `registry.py` for the contract).
Configs import no torch; `apply` functions import their heavy dependencies when called, so
`compress validate` and `--help` stay light.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from compress.methods.registry import (
    Method,
    StageContext,
    StageRecord,
    registered,
)

if TYPE_CHECKING:
    from compress.handle import ModelHandle

#: modules of this package that are shared plumbing, not methods
SUPPORT = frozenset({"registry"})  # and any module whose name starts with "_"

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name not in SUPPORT:
        importlib.import_module(f"{__name__}.{_info.name}")

METHODS: dict[str, Method] = registered()

#: the discriminated union of every registered method's config (what `stages:` holds)
StageConfig = Annotated[
    Union[tuple(m.config for m in METHODS.values())],  # noqa: UP007 (built at runtime)
    Field(discriminator="method"),
]


def method_names() -> list[str]:
    return list(METHODS)


def config_class(name: str) -> type | None:
    entry = METHODS.get(name)
    return entry.config if entry else None


def needs_calibration(config: Any) -> bool:
    return bool(getattr(config, "needs_calibration", False))


def run_stage(
    handle: ModelHandle,
    config: Any,
    calibration: Any = None,
    *,
    baseline: ModelHandle | None = None,
    **context: Any,
) -> StageRecord:
    """Run one stage on `handle` outside a pipeline (tests, benchmarks, notebooks)."""
    ctx = StageContext(
        model=handle,
        baseline=baseline,
        device=handle.device,
        calibration_loader=(lambda: calibration) if calibration is not None else None,
        **context,
    )
    return METHODS[config.method].apply(ctx, config)


__all__ = [
    "METHODS",
    "Method",
    "StageConfig",
    "StageContext",
    "StageRecord",
    "config_class",
    "method_names",
    "needs_calibration",
    "run_stage",
]

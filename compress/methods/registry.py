"""The stage contract and the method registry (pure Python + pydantic, no torch).

A method is one module in `compress/methods/` that defines its pydantic config (with a
`method: Literal["name"]` tag) and registers its `apply` where it is defined:

    @register(RTNConfig)
    def apply(ctx: StageContext, cfg: RTNConfig) -> StageRecord: ...

`apply` compresses `ctx.model` in place and returns a `StageRecord`. The context carries all
a stage may need: the frozen baseline (a teacher for distillation), calibration and training
data behind accessors that load on first use, the device, a progress callback and a scratch
directory for checkpoints. The recipe's discriminated union of stage configs is built from
this registry (`compress.methods.StageConfig`), so adding a method is one file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from compress.errors import BadInput

if TYPE_CHECKING:
    from compress.handle import ModelHandle


class StageRecord(BaseModel):
    """What one stage did, as written into the artifact manifest and the report."""

    model_config = ConfigDict(extra="forbid")

    method: str
    summary: str = ""
    kernel: str | None = Field(None, description="what the compressed layers run on, in words")
    compute_dtype: str | None = None
    bytes_before: int | None = Field(None, description="weights in memory before the stage")
    bytes_after: int | None = Field(None, description="weights in memory after the stage")
    saves_memory: bool | None = Field(None, description="bytes_after < bytes_before")
    saves_time: bool | None = Field(
        None, description="the method's claim that its kernels can run faster (profiling checks)"
    )
    notes: list[str] = []
    seconds: float = 0.0
    details: dict[str, Any] = Field({}, description="method-specific figures")
    config: dict[str, Any] = Field({}, description="the stage's config as validated")

    @classmethod
    def make(cls, **fields: Any) -> StageRecord:
        """Known fields by name; every other keyword lands in `details`."""
        known = {k: v for k, v in fields.items() if k in cls.model_fields}
        extra = {k: v for k, v in fields.items() if k not in cls.model_fields}
        known["details"] = {**known.get("details", {}), **extra}
        return cls(**known)

    def measured(self, before: int, after: int) -> StageRecord:
        """This record with the weight bytes around the stage filled in."""
        return self.model_copy(
            update={"bytes_before": before, "bytes_after": after, "saves_memory": after < before}
        )


def _no_training_data() -> Any:
    raise BadInput(
        "this stage needs training data and the recipe names none",
        fix="add a 'training:' section to the recipe.",
    )


@dataclass
class StageContext:
    """Everything a stage may use. Data accessors load on first call and cache."""

    model: ModelHandle  # compressed in place
    baseline: ModelHandle | None = None  # frozen; the teacher for distillation
    device: str = "cpu"
    seed: int = 0
    scratch_dir: Path | None = None  # checkpoints of long stages; removed after the run
    data_dir: str | None = None  # where local data sets are looked up first (--data-dir)
    progress: Callable[[str, int, int], None] | None = None  # (what, done, total)
    calibration_loader: Callable[[], Any] | None = None
    training_loader: Callable[[], Any] = _no_training_data
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def calibration(self) -> Any:
        """The calibration set (token ids + provenance), or None when the recipe has none."""
        if "calibration" not in self._cache:
            loader = self.calibration_loader
            self._cache["calibration"] = loader() if loader is not None else None
        return self._cache["calibration"]

    def training_data(self) -> Any:
        if "training" not in self._cache:
            self._cache["training"] = self.training_loader()
        return self._cache["training"]

    def report_progress(self, what: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(what, done, total)


ApplyFn = Callable[[StageContext, Any], StageRecord]


@dataclass(frozen=True)
class Method:
    name: str
    config: type[BaseModel]
    apply: ApplyFn


_REGISTRY: dict[str, Method] = {}


def method_tag(config: type[BaseModel]) -> str:
    """The `method:` value a config class is tagged with (its Literal default)."""
    f = config.model_fields.get("method")
    if f is None or not isinstance(f.default, str):
        raise TypeError(f"{config.__name__} needs a `method: Literal[...] = '<name>'` field")
    return f.default


def register(config: type[BaseModel]) -> Callable[[ApplyFn], ApplyFn]:
    """Decorator: register `apply` as the method named by `config`'s `method` tag."""

    name = method_tag(config)

    def deco(fn: ApplyFn) -> ApplyFn:
        old = _REGISTRY.get(name)
        if old is not None and (old.config is not config or old.apply.__module__ != fn.__module__):
            raise ValueError(f"method '{name}' is registered twice ({old.apply.__module__})")
        _REGISTRY[name] = Method(name, config, fn)
        return fn

    return deco


def registered() -> dict[str, Method]:
    return dict(_REGISTRY)

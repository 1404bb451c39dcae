"""The report's schema: versioned, every figure with unit, direction, n and uncertainty."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

REPORT_SCHEMA_VERSION = 1

Status = Literal["measured", "estimated", "unavailable"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Measurement(_Model):
    name: str
    value: float | None = Field(description="point estimate (median or mean, see method)")
    unit: str
    higher_is_better: bool
    n: int = Field(ge=0, description="number of samples behind the value")
    stderr: float | None = None
    ci95: list[float] | None = Field(None, min_length=2, max_length=2)
    samples: list[float] = []
    status: Status = "measured"
    method: str = ""
    reason: str | None = Field(None, description="why unavailable, or how it was estimated")
    runtime: str | None = Field(None, description="what executed it, e.g. 'torch 2.13 eager cpu'")


class Comparison(_Model):
    metric: str
    unit: str
    higher_is_better: bool
    baseline: float | None
    compressed: float | None
    delta: float | None = Field(description="compressed - baseline")
    delta_ci95: list[float] | None = None
    ratio: float | None = Field(description="compressed / baseline")
    ratio_ci95: list[float] | None = None
    paired: bool = Field(description="true when both were measured on the same windows")
    verdict: Literal["better", "worse", "no significant change", "unknown"]
    method: str = ""


class RunRecord(_Model):
    label: Literal["baseline", "compressed"]
    model: dict[str, Any]
    dtype: str
    stages: list[dict[str, Any]] = []
    measurements: list[Measurement]
    context: dict[str, Any] = {}

    def get(self, name: str) -> Measurement | None:
        return next((m for m in self.measurements if m.name == name), None)


class GateResult(_Model):
    metric: str
    kind: str
    threshold: float
    status: Literal["pass", "fail", "inconclusive"]
    observed: float | None
    interval: list[float] | None
    explanation: str


class CostSummary(_Model):
    usd_per_device_hour: float
    device_name: str
    basis: str
    baseline_usd_per_million_tokens: float | None
    compressed_usd_per_million_tokens: float | None
    cost_saving_fraction: float | None
    cost_saving_ci95: list[float] | None
    memory_saving_fraction: float | None
    quality_loss_fraction: float | None = Field(description="relative perplexity increase")
    quality_loss_ci95: list[float] | None
    saving_per_quality_loss: float | None = Field(
        description="cost saved (%) per 1% of perplexity increase"
    )
    saving_per_quality_loss_ci95: list[float] | None = Field(
        None,
        description="conservative 95% range: the saving interval's ends over the loss "
        "interval's ends (null when the loss interval reaches 0: the ratio is unbounded)",
    )
    headline: str


class Report(_Model):
    schema_version: int = REPORT_SCHEMA_VERSION
    tool: dict[str, str]
    run: dict[str, Any]
    recipe: dict[str, Any]
    environment: dict[str, Any]
    data: list[dict[str, Any]]
    definitions: dict[str, str]
    baseline: RunRecord
    compressed: RunRecord
    comparisons: list[Comparison]
    cost: CostSummary | None
    gates: list[GateResult]
    exit_code: int
    notes: list[str] = []

    def comparison(self, metric: str) -> Comparison | None:
        return next((c for c in self.comparisons if c.metric == metric), None)


def report_json_schema() -> dict[str, Any]:
    schema = Report.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"compress report (schema v{REPORT_SCHEMA_VERSION})"
    return schema

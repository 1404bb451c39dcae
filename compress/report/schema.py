"""The report's schema: versioned, every figure with unit, direction, n and uncertainty."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: 2: comparisons carry the statistic they use (geometric means for log-paired metrics) and
#: log_ratio_stderr / delta_stderr / df / n / scale; cost carries per-batch savings and the
#: basis. 3: one baseline and a list of `variants`, each with its own record, comparisons,
#: cost, gates and exit code (v1/v2 held one `compressed` side; `migrate` turns such a report
#: into a one-variant v3 report named "compressed").
REPORT_SCHEMA_VERSION = 3

Status = Literal["measured", "estimated", "unavailable"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Measurement(_Model):
    name: str
    value: float | None = Field(
        description="point estimate: mean, median or geometric mean, named in method"
    )
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
    baseline: float | None = Field(description="the statistic the comparison uses (see method)")
    compressed: float | None = Field(description="the same statistic for the compressed model")
    delta: float | None = Field(description="compressed - baseline")
    delta_ci95: list[float] | None = None
    ratio: float | None = Field(description="compressed / baseline")
    ratio_ci95: list[float] | None = None
    paired: bool = Field(
        description="true when measured in pairs: the same windows, or alternating processes"
    )
    verdict: Literal["better", "worse", "no significant change", "unknown"]
    method: str = ""
    scale: Literal["log", "perplexity", "mean", "exact", "bootstrap"] | None = Field(
        None,
        description="log/perplexity: ratio interval = ratio * exp(+-t(df) * log_ratio_stderr); "
        "mean: delta +- t(df) * delta_stderr, ratio by Fieller; exact: counted, no error; "
        "bootstrap: paired bootstrap percentile intervals over items (task metrics)",
    )
    log_ratio_stderr: float | None = Field(
        None, description="standard error of log(ratio) (delta method on the mean scale)"
    )
    delta_stderr: float | None = Field(None, description="standard error of delta")
    df: float | None = Field(None, description="degrees of freedom of the t quantile")
    n: int | None = Field(None, description="pairs, windows or samples (smaller side) behind it")
    p_value: float | None = Field(
        None, description="task metrics: McNemar's exact two-sided p on the items that changed"
    )
    flips: dict[str, list[int]] | None = Field(
        None,
        description="task metrics: item indices 'lost' (right before, wrong after) and 'gained'",
    )


class RunRecord(_Model):
    label: str = Field(description="'baseline', or the variant's name")
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


class BatchCost(_Model):
    batch_size: int
    metric: str
    baseline_usd_per_million_tokens: float | None
    compressed_usd_per_million_tokens: float | None
    cost_saving_fraction: float | None
    cost_saving_ci95: list[float] | None


class CostSummary(_Model):
    usd_per_device_hour: float
    device_name: str
    basis: str
    batch_size: int | None = Field(None, description="batch size of the headline's cost")
    runtime: str | None = Field(None, description="what executed the models for the cost")
    dtype: str | None = Field(None, description="compute dtypes, baseline -> compressed")
    baseline_usd_per_million_tokens: float | None
    compressed_usd_per_million_tokens: float | None
    cost_saving_fraction: float | None
    cost_saving_ci95: list[float] | None
    by_batch: list[BatchCost] = Field([], description="cost saving at every profiled batch size")
    memory_saving_fraction: float | None
    quality_loss_fraction: float | None = Field(description="relative perplexity increase")
    quality_loss_ci95: list[float] | None
    saving_per_quality_loss: float | None = Field(
        description="exchange rate: percentage points of cost saved per 1 percentage point of "
        "perplexity increase (saving / loss); only when the saving and the loss are both "
        "significant and the loss is an increase"
    )
    saving_per_quality_loss_ci95: list[float] | None = Field(
        None,
        description="joint >= 95% range of the exchange rate: smallest and largest of the four "
        "corners of the saving and loss intervals, each at the Bonferroni-adjusted level "
        "(see saving_per_quality_loss_level); null when the adjusted loss interval reaches 0",
    )
    saving_per_quality_loss_level: float | None = Field(
        None, description="confidence level of each interval whose corners give the range"
    )
    headline: str


class VariantResult(_Model):
    """One compressed variant against the shared baseline: measured on the same windows and
    timed in the same interleaved rounds as every other variant."""

    name: str
    description: str = ""
    control: bool = Field(
        False, description="a reference point (e.g. a plain cast): reported, not gated"
    )
    record: RunRecord
    comparisons: list[Comparison]
    cost: CostSummary | None
    gates: list[GateResult]
    exit_code: int
    notes: list[str] = []

    def comparison(self, metric: str) -> Comparison | None:
        return next((c for c in self.comparisons if c.metric == metric), None)


class Report(_Model):
    schema_version: int = REPORT_SCHEMA_VERSION
    tool: dict[str, str]
    run: dict[str, Any]
    recipe: dict[str, Any]
    environment: dict[str, Any]
    data: list[dict[str, Any]]
    definitions: dict[str, str]
    baseline: RunRecord
    variants: list[VariantResult] = Field(min_length=1)
    exit_code: int = Field(description="the worst of the variants' exit codes")
    notes: list[str] = []

    def variant(self, name: str) -> VariantResult:
        found = next((v for v in self.variants if v.name == name), None)
        if found is None:
            names = ", ".join(v.name for v in self.variants)
            raise KeyError(f"no variant '{name}' in this report (it has: {names})")
        return found


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A v1/v2 report (one `compressed` side) as a v3 report with one variant, 'compressed'.
    Current reports pass through unchanged; newer ones are refused by the caller."""
    version = int(data.get("schema_version", 1))
    if version >= 3 or "compressed" not in data:
        return data
    out = {k: v for k, v in data.items() if k not in ("compressed", "comparisons", "cost", "gates")}
    out["variants"] = [
        {
            "name": "compressed",
            "record": data["compressed"],
            "comparisons": data.get("comparisons", []),
            "cost": data.get("cost"),
            "gates": data.get("gates", []),
            "exit_code": data.get("exit_code", 0),
        }
    ]
    out["schema_version"] = REPORT_SCHEMA_VERSION
    out["run"] = dict(data.get("run", {}), migrated_from_schema=version)
    return out


def check_schema_version(version: Any) -> int:
    """`version` when this tool reads reports of that schema; ValueError saying why not."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(
            f"schema_version {version!r} is not a version number; expected an integer from 1 "
            f"to {REPORT_SCHEMA_VERSION}"
        )
    if version < 1:
        raise ValueError(
            f"schema_version {version} is older than any this tool reads "
            f"(1 to {REPORT_SCHEMA_VERSION}); re-run the recipe for a current report"
        )
    if version > REPORT_SCHEMA_VERSION:
        raise ValueError(
            f"schema_version {version} is newer than this tool reads "
            f"(<= {REPORT_SCHEMA_VERSION}); upgrade compress"
        )
    return version


def parse_report(text: str) -> Report:
    """report.json text (any schema version up to this one) as a `Report`; raises ValueError
    for JSON that is not a report and for reports newer than this tool."""
    import json

    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    check_schema_version(data.get("schema_version", 1))
    return Report.model_validate(migrate(data))


def report_json_schema() -> dict[str, Any]:
    schema = Report.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"compress report (schema v{REPORT_SCHEMA_VERSION})"
    return schema

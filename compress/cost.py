"""Cost model: $ per 1M decoded tokens from the measured throughput and a stated device price,
and the number this tool exists for: cost saved per unit of quality lost."""

from __future__ import annotations

from compress import stats
from compress.recipe import CostConfig
from compress.report.schema import Comparison, CostSummary, Measurement, RunRecord

COST_METRIC = "cost.usd_per_million_tokens"
QUALITY_METRIC = "wikitext2.perplexity"
SPEED_METRIC = "decode.tokens_per_s"


def cost_measurement(record: RunRecord, cfg: CostConfig) -> Measurement:
    tps = record.get(SPEED_METRIC)
    price = cfg.usd_per_device_hour
    if tps is None or tps.value is None or not tps.samples:
        return Measurement(
            name=COST_METRIC,
            value=None,
            unit="USD/1M tokens",
            higher_is_better=False,
            n=0,
            status="unavailable",
            reason="no decode throughput was measured",
        )
    samples = [price / (s * 3600) * 1e6 for s in tps.samples]
    _, se, ci = stats.mean_ci(samples)
    return Measurement(
        name=COST_METRIC,
        value=stats.median(samples),
        unit="USD/1M tokens",
        higher_is_better=False,
        n=len(samples),
        stderr=se,
        ci95=list(ci) if ci else None,
        samples=samples,
        status="estimated",
        method="device price / (decode tokens/s x 3600) x 1e6, per timed repeat",
        reason=f"stated price {price} USD/h for {cfg.device_name} (recipe cost block) x measured "
        "batch-1 decode throughput; one stream per device assumed",
    )


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def summarize(comparisons: list[Comparison], cfg: CostConfig) -> CostSummary:
    by = {c.metric: c for c in comparisons}
    cost, mem, ppl = by.get(COST_METRIC), by.get("weights.bytes"), by.get(QUALITY_METRIC)
    saving = saving_ci = None
    if cost is not None and cost.ratio is not None:
        saving = 1 - cost.ratio
        if cost.ratio_ci95:
            saving_ci = [1 - cost.ratio_ci95[1], 1 - cost.ratio_ci95[0]]
    mem_saving = 1 - mem.ratio if mem is not None and mem.ratio is not None else None
    loss = loss_ci = None
    if ppl is not None and ppl.ratio is not None:
        loss = ppl.ratio - 1
        loss_ci = [r - 1 for r in ppl.ratio_ci95] if ppl.ratio_ci95 else None
    per_loss = per_loss_ci = None
    if saving is None:
        headline = "Cost could not be compared: decode throughput was not measured on both models."
    elif loss is None:
        headline = f"Serving cost {_pct(-saving)}; quality was not evaluated."
    elif loss_ci is not None and loss_ci[0] <= 0:
        headline = (
            f"Serving cost {_pct(-saving)} per token with no measurable perplexity increase "
            f"({_pct(loss)}, 95% CI {_pct(loss_ci[0])} to {_pct(loss_ci[1])})."
        )
    else:
        per_loss = saving / loss if loss > 0 else None
        if per_loss is not None and saving_ci and loss_ci:
            # ends over ends: each interval 95%, so the range is conservative (not a 95% CI
            # of the ratio); no delta method, which misbehaves when the loss is near 0
            per_loss_ci = [saving_ci[0] / loss_ci[1], saving_ci[1] / loss_ci[0]]
        headline = (
            f"Serving cost {_pct(-saving)} per token for a perplexity change of {_pct(loss)}"
            + (f": {per_loss:.2f}% cost saved per 1% perplexity lost" if per_loss else "")
            + (
                f" (range {per_loss_ci[0]:.2f} to {per_loss_ci[1]:.2f} from the two 95% intervals)."
                if per_loss_ci
                else "."
            )
        )
    if mem_saving is not None:
        headline += f" Weights take {_pct(-mem_saving)} memory."
    return CostSummary(
        usd_per_device_hour=cfg.usd_per_device_hour,
        device_name=cfg.device_name,
        basis="batch-1 decode throughput measured here x stated device price",
        baseline_usd_per_million_tokens=cost.baseline if cost else None,
        compressed_usd_per_million_tokens=cost.compressed if cost else None,
        cost_saving_fraction=saving,
        cost_saving_ci95=saving_ci,
        memory_saving_fraction=mem_saving,
        quality_loss_fraction=loss,
        quality_loss_ci95=loss_ci,
        saving_per_quality_loss=per_loss,
        saving_per_quality_loss_ci95=per_loss_ci,
        headline=headline,
    )

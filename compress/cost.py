"""Cost model: $ per 1M decoded tokens from the measured throughput and a stated device price,
at every profiled batch size, and the trade-off this tool exists for: the cost saving and the
quality loss, each with its 95% interval, and an exchange rate between them only when both are
significant.

Cost samples are computed per throughput sample (one per process) and summarised on the log
scale like the throughput itself, so the cost ratio is exactly the reciprocal of the
throughput ratio and its interval the reciprocal interval.
"""

from __future__ import annotations

import math
import re
from typing import Any

from compress import stats
from compress.recipe import CostConfig
from compress.report.schema import BatchCost, Comparison, CostSummary, Measurement, RunRecord

COST_METRIC = "cost.usd_per_million_tokens"
QUALITY_METRIC = "wikitext2.perplexity"
SPEED_METRIC = "decode.tokens_per_s"
#: per-interval level whose four corners give a joint >= 95% range (Bonferroni, two intervals)
RATE_LEVEL = 0.975
DEFAULT_BASIS: dict[str, Any] = {"batch": 1, "runtime": None, "dtype": None}
_SPEED = re.compile(r"^decode\.tokens_per_s(?:@bs(\d+))?$")


def _unavailable(name: str, reason: str) -> Measurement:
    return Measurement(**stats.unavailable(name, "USD/1M tokens", False, reason))


def cost_measurement(
    record: RunRecord, cfg: CostConfig, speed_metric: str = SPEED_METRIC
) -> Measurement:
    """USD per 1M decoded tokens from `speed_metric` (decode.tokens_per_s or its @bsN
    variant): one cost sample per throughput sample, geometric mean with the log interval."""
    m = _SPEED.match(speed_metric)
    if m is None:
        raise ValueError(f"not a decode throughput metric: {speed_metric}")
    sfx = f"@bs{m.group(1)}" if m.group(1) else ""
    name, batch = COST_METRIC + sfx, int(m.group(1) or 1)
    tps = record.get(speed_metric)
    if tps is None or tps.value is None:
        return _unavailable(name, f"no {speed_metric} was measured")
    price = cfg.usd_per_device_hour
    samples = [float(s) for s in tps.samples] if len(tps.samples) == tps.n else [tps.value]
    if min(samples) <= 0:
        return _unavailable(name, f"{speed_metric} has a non-positive sample: {samples}")
    streams = "one stream per device" if batch == 1 else f"{batch} concurrent streams per device"
    d = stats.log_measurement(
        name,
        [price / (s * 3600) * 1e6 for s in samples],
        "USD/1M tokens",
        False,
        f"device price / ({speed_metric} x 3600) x 1e6, one sample per throughput sample",
        status="estimated",
        reason=f"stated price {price} USD/h for {cfg.device_name} (recipe cost block) x "
        f"measured batch-{batch} decode throughput; {streams} assumed",
    )
    return Measurement(**d)


def cost_measurements(record: RunRecord, cfg: CostConfig) -> list[Measurement]:
    """One cost measurement per decode throughput in the record (batch 1 and every @bsN)."""
    names = [m.name for m in record.measurements if _SPEED.match(m.name)]
    return [cost_measurement(record, cfg, n) for n in sorted(names, key=_batch_of)]


def _batch_of(metric: str) -> int:
    _, _, sfx = metric.partition("@bs")
    return int(sfx) if sfx.isdigit() else 1


# -- the trade-off ------------------------------------------------------------------------
def _num(x: float) -> str:
    """A rate for reading: 3 significant digits below 100, whole numbers above, no exponent."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _pct(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:+.2f}%" if abs(x) < 0.001 else f"{100 * x:+.1f}%"


def _ci_pct(iv: list[float] | None) -> str:
    return f" [95% CI {_pct(iv[0])}, {_pct(iv[1])}]" if iv else " (no interval)"


def _ratio_ci_at(c: Comparison, level: float) -> list[float] | None:
    """The comparison's ratio interval recomputed at `level` (log scale: ratio x
    exp(+-t(df) x log_ratio_stderr)); None when the report lacks the stderr or df."""
    if c.ratio is None or c.log_ratio_stderr is None or c.ratio <= 0:
        return None
    if c.log_ratio_stderr == 0:  # exact on both sides
        return [c.ratio, c.ratio] if c.scale == "exact" else None
    if c.df is None or c.scale not in ("log", "perplexity"):
        return None
    h = stats.t_quantile(c.df, level) * c.log_ratio_stderr
    return [c.ratio * math.exp(-h), c.ratio * math.exp(h)]


def _saving(c: Comparison | None) -> tuple[float | None, list[float] | None]:
    if c is None or c.ratio is None:
        return None, None
    ci = [1 - c.ratio_ci95[1], 1 - c.ratio_ci95[0]] if c.ratio_ci95 else None
    return 1 - c.ratio, ci


def _excludes_zero(iv: list[float] | None) -> bool:
    return iv is not None and (iv[0] > 0 or iv[1] < 0)


def exchange_rate(
    cost: Comparison, quality: Comparison, level: float = RATE_LEVEL
) -> tuple[float | None, list[float] | None]:
    """Percentage points of cost saved per 1 point of perplexity increase, and its joint
    >= 95% range from the four corners of the saving and loss intervals each at `level`.
    (None, None) unless the saving and the (positive) loss are both significant at `level`,
    so that the range is bounded and of one sign."""
    saving, saving_ci = _saving(cost)
    if quality.ratio is None or not quality.ratio_ci95 or saving is None:
        return None, None
    loss_ci = [r - 1 for r in quality.ratio_ci95]
    if not (_excludes_zero(saving_ci) and loss_ci[0] > 0):
        return None, None
    rate = saving / (quality.ratio - 1)
    c_adj, q_adj = _ratio_ci_at(cost, level), _ratio_ci_at(quality, level)
    if c_adj is None or q_adj is None:
        return rate, None
    s_adj, l_adj = [1 - c_adj[1], 1 - c_adj[0]], [q - 1 for q in q_adj]
    if not (_excludes_zero(s_adj) and l_adj[0] > 0):  # a one-signed, bounded range or none
        return None, None
    return rate, stats.quotient_range(s_adj, l_adj)


def _basis_text(basis: dict[str, Any], batch: int | None = None) -> str:
    parts = [str(basis[k]) for k in ("runtime", "dtype") if basis.get(k)]
    b = batch if batch is not None else basis.get("batch", 1)
    return f"at batch {b}" + (f" ({'; '.join(parts)})" if parts else "")


def _quality_text(loss, loss_ci) -> str:
    if loss_ci is not None and loss_ci[0] <= 0 <= loss_ci[1]:
        return f"no measurable perplexity increase ({_pct(loss)}{_ci_pct(loss_ci)})"
    if loss_ci is not None and loss_ci[1] < 0:
        return f"perplexity measurably lower ({_pct(loss)}{_ci_pct(loss_ci)})"
    return f"perplexity {_pct(loss)}{_ci_pct(loss_ci)}"


def _rate_text(rate, rate_ci, saving_ci, loss_ci) -> str:
    if rate is not None:
        rng = (
            f" (joint 95% range {_num(rate_ci[0])} to {_num(rate_ci[1])}: the four corners of the "
            f"two intervals, each at {RATE_LEVEL:.1%})"
            if rate_ci
            else " (range unbounded: the loss interval at the joint level reaches 0)"
        )
        return f": {_num(rate)} percentage points of cost saved per 1% perplexity increase{rng}."
    if loss_ci is not None and loss_ci[0] > 0 and not _excludes_zero(saving_ci):
        return ": the cost change is not significant, so no exchange rate."
    if loss_ci is not None and loss_ci[0] > 0:
        return (
            f": no exchange rate, the saving and the loss are not both significant at the "
            f"{RATE_LEVEL:.1%} level each that a joint 95% range needs."
        )
    return "."


def _batch_costs(by: dict[str, Comparison]) -> list[BatchCost]:
    out = []
    for name in sorted((n for n in by if n.startswith(COST_METRIC)), key=_batch_of):
        s, ci = _saving(by[name])
        out.append(
            BatchCost(
                batch_size=_batch_of(name),
                metric=name,
                baseline_usd_per_million_tokens=by[name].baseline,
                compressed_usd_per_million_tokens=by[name].compressed,
                cost_saving_fraction=s,
                cost_saving_ci95=ci,
            )
        )
    return out


def summarize(
    comparisons: list[Comparison], cfg: CostConfig, basis: dict[str, Any] | None = None
) -> CostSummary:
    """The cost headline. `basis`: batch (the batch size of `cost.usd_per_million_tokens`),
    runtime and dtype, named in the headline's first sentence."""
    basis = {**DEFAULT_BASIS, **(basis or {})}
    by = {c.metric: c for c in comparisons}
    cost, mem, ppl = by.get(COST_METRIC), by.get("weights.bytes"), by.get(QUALITY_METRIC)
    saving, saving_ci = _saving(cost)
    mem_saving = 1 - mem.ratio if mem is not None and mem.ratio is not None else None
    loss = loss_ci = rate = rate_ci = None
    if ppl is not None and ppl.ratio is not None:
        loss = ppl.ratio - 1
        loss_ci = [r - 1 for r in ppl.ratio_ci95] if ppl.ratio_ci95 else None
    where = _basis_text(basis)
    if saving is None:
        headline = (
            f"Cost could not be compared {where}: decode throughput was not measured on both "
            "models."
        )
    else:
        headline = f"Serving cost per token {where}: {_pct(-saving)}{_ci_pct(_neg(saving_ci))}"
        if loss is None:
            headline += "; quality was not evaluated."
        else:
            assert cost is not None and ppl is not None
            rate, rate_ci = exchange_rate(cost, ppl)
            headline += f", {_quality_text(loss, loss_ci)}"
            headline += _rate_text(rate, rate_ci, saving_ci, loss_ci)
    batches = _batch_costs(by)
    for b in batches:
        if b.batch_size != basis["batch"] and b.cost_saving_fraction is not None:
            headline += (
                f" At batch {b.batch_size}: serving cost {_pct(-b.cost_saving_fraction)}"
                f"{_ci_pct(_neg(b.cost_saving_ci95))}."
            )
    if mem_saving is not None:
        headline += f" Weights take {_pct(-mem_saving)} memory."
    parts = [str(basis[k]) for k in ("runtime", "dtype") if basis.get(k)]
    return CostSummary(
        usd_per_device_hour=cfg.usd_per_device_hour,
        device_name=cfg.device_name,
        basis=f"batch-{basis['batch']} decode throughput measured here"
        + (f" ({'; '.join(parts)})" if parts else "")
        + " x stated device price",
        batch_size=basis["batch"],
        runtime=basis.get("runtime"),
        dtype=basis.get("dtype"),
        baseline_usd_per_million_tokens=cost.baseline if cost else None,
        compressed_usd_per_million_tokens=cost.compressed if cost else None,
        cost_saving_fraction=saving,
        cost_saving_ci95=saving_ci,
        by_batch=batches,
        memory_saving_fraction=mem_saving,
        quality_loss_fraction=loss,
        quality_loss_ci95=loss_ci,
        saving_per_quality_loss=rate,
        saving_per_quality_loss_ci95=rate_ci,
        saving_per_quality_loss_level=RATE_LEVEL if rate_ci else None,
        headline=headline,
    )


def _neg(iv: list[float] | None) -> list[float] | None:
    """A saving interval as a cost-change interval (sign flipped, ends swapped)."""
    return [-iv[1], -iv[0]] if iv else None

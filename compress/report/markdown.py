"""report.md: a before/after/delta table a reviewer reads in ten seconds, then the details."""

from __future__ import annotations

from compress.metrics import is_relative
from compress.report.schema import Comparison, Measurement, Report, VariantResult

_STATUS = {0: "PASS", 1: "FAIL", 3: "INCONCLUSIVE", 2: "BAD INPUT"}
_MIB = 1024 * 1024


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit == "bytes":
        return f"{v / _MIB:,.1f} MiB"
    if unit == "fraction":
        return f"{100 * v:.2f}%"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.3f}"
    return f"{v:.4g}"


def _iv(iv: list[float] | None, unit: str) -> str:
    return f" [{fmt(iv[0], unit)}, {fmt(iv[1], unit)}]" if iv else ""


def _ratio(c: Comparison) -> str:
    if c.ratio is None:
        return "n/a"
    iv = f" [{c.ratio_ci95[0]:.3f}, {c.ratio_ci95[1]:.3f}]" if c.ratio_ci95 else ""
    return f"{c.ratio:.3f}x{iv}"


def _unit_label(unit: str) -> str:
    return "MiB" if unit == "bytes" else unit


def comparison_table(r: VariantResult) -> list[str]:
    lines = [
        "| metric | unit | better | baseline | compressed | delta [95% CI] | ratio [95% CI] "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in r.comparisons:
        better = "higher" if c.higher_is_better else "lower"
        unit = c.unit
        delta = "n/a" if c.delta is None else fmt(c.delta, unit) + _iv(c.delta_ci95, unit)
        lines.append(
            f"| {c.metric} | {_unit_label(unit)} | {better} | {fmt(c.baseline, unit)} | "
            f"{fmt(c.compressed, unit)} | {delta} | {_ratio(c)} | {c.verdict} |"
        )
    return lines


COLUMNS_NOTE = (
    "Baseline and compressed columns are the statistic each comparison uses (its `method` in "
    "report.json): geometric means for speed, memory, energy and cost (ratio = exp(mean log "
    "ratio), so compressed / baseline = ratio and throughput and latency ratios are "
    "reciprocal); exp(mean window NLL) for perplexity; means for NLL; counted values for "
    "bytes. Intervals are 95% [lo, hi]."
)


def _num(x: float) -> str:
    """A rate for reading: 3 significant digits below 100, whole numbers above, no exponent."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _pct(x: float) -> str:
    return f"{100 * x:+.2f}%" if abs(x) < 0.001 else f"{100 * x:+.1f}%"


def _pct_iv(iv: list[float] | None) -> str:
    return f" [{_pct(iv[0])}, {_pct(iv[1])}]" if iv else " (no interval)"


def cost_section(r: VariantResult, level: str = "##") -> list[str]:
    c = r.cost
    assert c is not None
    out = [
        "",
        f"{level} Cost",
        "",
        f"- Price basis: {c.usd_per_device_hour} USD/h for {c.device_name}; {c.basis}.",
        f"- USD per 1M decoded tokens: baseline {fmt(c.baseline_usd_per_million_tokens, '')}"
        f", compressed {fmt(c.compressed_usd_per_million_tokens, '')}.",
    ]
    if c.cost_saving_fraction is not None:
        out.append(
            f"- Cost saving{'' if c.batch_size is None else f' at batch {c.batch_size}'}: "
            f"{_pct(c.cost_saving_fraction)}{_pct_iv(c.cost_saving_ci95)} (95% CI)."
        )
    for b in c.by_batch:
        if b.batch_size != c.batch_size and b.cost_saving_fraction is not None:
            out.append(
                f"- Cost saving at batch {b.batch_size}: {_pct(b.cost_saving_fraction)}"
                f"{_pct_iv(b.cost_saving_ci95)} (95% CI); USD per 1M tokens "
                f"{fmt(b.baseline_usd_per_million_tokens, '')} -> "
                f"{fmt(b.compressed_usd_per_million_tokens, '')}."
            )
    if c.quality_loss_fraction is not None:
        out.append(
            f"- Perplexity increase: {_pct(c.quality_loss_fraction)}"
            f"{_pct_iv(c.quality_loss_ci95)} (95% CI)."
        )
    if c.saving_per_quality_loss is not None:
        rng = c.saving_per_quality_loss_ci95
        level = c.saving_per_quality_loss_level
        out.append(
            f"- Exchange rate: {_num(c.saving_per_quality_loss)} percentage points of cost saved "
            "per 1% perplexity increase"
            + (
                f" (joint 95% range [{_num(rng[0])}, {_num(rng[1])}]: the four corners of the "
                f"saving and loss intervals, each at {level:.1%})."
                if rng and level
                else f" (range [{_num(rng[0])}, {_num(rng[1])}])."
                if rng
                else " (no bounded range)."
            )
        )
    return out


def _measurement_rows(ms: list[Measurement], label: str) -> list[str]:
    rows = []
    for m in ms:
        val = fmt(m.value, m.unit) + _iv(m.ci95, m.unit)
        note = m.reason if m.status != "measured" and m.reason else m.method
        unit = "" if m.unit in ("bytes", "fraction") else f" {m.unit}"
        rows.append(f"| {label} | {m.name} | {val}{unit} | {m.n} | {m.status} | {note} |")
    return rows


def gates_section(r: VariantResult, level: str = "##") -> list[str]:
    out = [
        "",
        f"{level} Gates",
        "",
        "| metric | rule | threshold | observed [95% CI] | status |",
        "|---|---|---|---|---|",
    ]
    for g in r.gates:
        obs = "n/a" if g.observed is None else f"{g.observed:.4g}"
        iv = f" [{g.interval[0]:.4g}, {g.interval[1]:.4g}]" if g.interval else " (no interval)"
        out.append(
            f"| {g.metric} | {g.kind} | {g.threshold:g} | {obs}{iv} | **{g.status.upper()}** |"
        )
    out.append("")
    out.append(
        "A gate passes when the whole 95% interval is on the allowed side, fails when it "
        "is wholly on the wrong side, and is inconclusive (exit 3) otherwise, including when "
        "there is no interval to decide on (only a counted value's interval is its point)."
    )
    return out


def _cell(c: Comparison | None) -> str:
    """One variant's cell of the at-a-glance table: value, ratio [95% CI], verdict."""
    if c is None:
        return "n/a"
    verdict = {"no significant change": "n.s."}.get(c.verdict, c.verdict)
    return f"{fmt(c.compressed, c.unit)}; {_ratio(c)}; {verdict}"


def glance_table(r: Report) -> list[str]:
    """Every metric in one table: the baseline, then one column per variant."""
    names = [f"{v.name}{' (control)' if v.control else ''}" for v in r.variants]
    lines = [
        "| metric | unit | better | baseline | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    metrics = list(dict.fromkeys(c.metric for v in r.variants for c in v.comparisons))
    for name in metrics:
        cs = [v.comparison(name) for v in r.variants]
        first = next(c for c in cs if c is not None)
        better = "higher" if first.higher_is_better else "lower"
        cells = " | ".join(_cell(c) for c in cs)
        lines.append(
            f"| {name} | {_unit_label(first.unit)} | {better} | "
            f"{fmt(first.baseline, first.unit)} | {cells} |"
        )
    lines += [
        "",
        "Each variant's cell: its value; ratio to the baseline [95% CI]; verdict (n.s.: no "
        "significant change). All variants scored on the same windows and timed in the same "
        "interleaved rounds as the baseline.",
    ]
    return lines


def variant_section(r: Report, v: VariantResult, level: str) -> list[str]:
    """One variant: its stages, before/after table, divergence, gates, cost and notes."""
    out = []
    if level != "##":
        head = f"## Variant `{v.name}`{' (control, not gated)' if v.control else ''}"
        out += ["", head, ""] + ([v.description, ""] if v.description else [])
        if v.cost:
            out += [f"**{v.cost.headline}**", ""]
    for s in v.record.stages:
        kernel = f"; kernel `{s['kernel']}`" if s.get("kernel") else ""  # pruning: none new
        out.append(
            f"- Stage `{s.get('method')}`: {s.get('summary', '')}{kernel}; "
            f"{s.get('seconds', 0):.1f} s"
        )
        out += [f"  - {n}" for n in s.get("notes", [])]
    out.append(
        f"- Baseline computes in {r.baseline.dtype}, this variant in {v.record.dtype}; "
        f"device {r.environment.get('device')}; quick={r.run.get('quick')}."
    )
    runtimes = _runtimes(r.baseline.measurements, v.record.measurements)
    if runtimes:
        out.append(f"- Runtimes: {runtimes}.")
    out += ["", f"{level} Before / after", ""] + comparison_table(v)
    if any(c.scale is not None for c in v.comparisons):  # schema v2: the statistic is named
        out += ["", COLUMNS_NOTE]
    out += divergence_section([m for m in v.record.measurements if is_relative(m.name)])
    out += flips_section(v)
    if v.gates:
        out += gates_section(v, level)
    if v.cost:
        out += cost_section(v, level)
    if v.notes and level != "##":  # one variant: its notes join the run's
        out += ["", f"{level} Notes on {v.name}", ""] + [f"- {n}" for n in v.notes]
    return out


def _runtimes(base: list[Measurement], comp: list[Measurement]) -> str:
    """'baseline in X; this variant in Y' when the timed figures name their runtime."""

    def one(ms):
        return next((m.runtime for m in ms if m.name == "decode.tokens_per_s" and m.runtime), None)

    b, c = one(base), one(comp)
    if not (b and c):
        return ""
    return f"baseline in {b}; this variant in {c}" if b != c else f"both in {b}"


#: divergence figures in llama.cpp's order: name -> (llama.cpp's label, what the interval is)
_KLD_ROWS = {
    "kld.mean": ("Mean KLD", "t over windows"),
    "kld.median": ("Median KLD", "bootstrap over windows"),
    "kld.p90": ("90.0% KLD", "bootstrap over windows"),
    "kld.p95": ("95.0% KLD", "bootstrap over windows"),
    "kld.p99": ("99.0% KLD", "bootstrap over windows"),
    "kld.p99_9": ("99.9% KLD", "bootstrap over windows"),
    "kld.max": ("Maximum KLD", "none (a maximum)"),
    "kld.same_top1": ("Same top p", "Wilson over tokens (not independent: do not gate)"),
    "kld.top1_agreement": ("", "t over windows (gate on this one)"),
}
_WINDOW_LEVEL = ("kld.mean", "kld.top1_agreement")


def divergence_summary(ms: list[Measurement]) -> str | None:
    """One line as llama.cpp's KL divergence statistics read: mean +- stderr, percentiles,
    maximum, same top-1 +- its binomial stderr (None without the token-level figures)."""
    by = {m.name: m for m in ms if m.value is not None}
    if "kld.median" not in by:
        return None
    short = {"kld.median": "median", "kld.p90": "p90", "kld.p95": "p95", "kld.p99": "p99"}
    short |= {"kld.p99_9": "p99.9", "kld.max": "max"}
    parts = [f"KLD mean {_pm(by.get('kld.mean'))} nats/token"]
    parts += [f"{label} {fmt(by[n].value, '')}" for n, label in short.items() if n in by]
    line = ", ".join(parts)
    if "kld.same_top1" in by:
        line += f"; same top-1 {_pm(by['kld.same_top1'], percent=True)}% over tokens"
    if "kld.top1_agreement" in by:
        m = by["kld.top1_agreement"]
        line += f", {fmt(m.value, m.unit)}{_iv(m.ci95, m.unit)} over windows"
    return line


def _pm(m: Measurement | None, percent: bool = False) -> str:
    """value ± stderr; `percent`: x 100 with 3 decimals, as llama.cpp prints 'Same top p'."""
    if m is None or m.value is None:
        return "n/a"
    f = (lambda x: f"{100 * x:.3f}") if percent else (lambda x: fmt(x, ""))
    return f(m.value) + (f" ± {f(m.stderr)}" if m.stderr else "")


def divergence_section(ms: list[Measurement]) -> list[str]:
    """The divergence figures: a llama.cpp-style line and a table (each figure's interval,
    n and what the interval is over); reports without token-level figures: one line each."""
    if not ms:
        return []
    head = ["", "Divergence from the baseline on the same windows:", ""]
    summary = divergence_summary(ms)
    if summary is None:  # reports before the token-level figures read as they did
        return head + [
            f"- {m.name}: {fmt(m.value, m.unit)}{_iv(m.ci95, m.unit)} {m.unit} (n={m.n} windows)"
            for m in ms
        ]
    windows = next((m.n for m in ms if m.name == "kld.mean"), None)
    out = head + [
        f"{summary} (as llama.cpp's `llama-perplexity --kl-divergence` reports them; "
        "KL(baseline || variant) per token, nats).",
        "",
        "| metric | llama.cpp | value [95% CI] | stderr | n | interval |",
        "|---|---|---|---|---|---|",
    ]
    order = {n: i for i, n in enumerate(_KLD_ROWS)}
    for m in sorted(ms, key=lambda m: order.get(m.name, len(order))):
        label, over = _KLD_ROWS.get(m.name, ("", ""))
        unit = "" if m.unit == "fraction" else f" {m.unit}"
        n = f"{m.n} windows" if m.name in _WINDOW_LEVEL else f"{m.n} tokens"
        if m.name not in _WINDOW_LEVEL and windows:
            n += f" ({windows} windows)"
        se = "" if m.stderr is None else fmt(m.stderr, m.unit)
        value = fmt(m.value, m.unit) + _iv(m.ci95, m.unit) + unit
        out.append(f"| {m.name} | {label} | {value} | {se} | {n} | {over} |")
    return out


def render(r: Report) -> str:
    status = _STATUS.get(r.exit_code, str(r.exit_code))
    if r.run.get("status") == "failed":
        status = "RUN FAILED"
    out = [f"# compress report: {r.recipe['name']}: {status} (exit {r.exit_code})", ""]
    one = len(r.variants) == 1
    if one and r.variants[0].cost:
        out += [f"**{r.variants[0].cost.headline}**", ""]
    if not one:
        out += [
            f"- **{v.name}**{' (control)' if v.control else ''}: "
            f"{_STATUS.get(v.exit_code, v.exit_code)}" + (f"; {v.cost.headline}" if v.cost else "")
            for v in r.variants
        ] + [""]
    src = r.baseline.model
    out += [f"- Model: `{src.get('spec')}`. {src.get('note') or ''}".rstrip()]
    if not one:
        out += ["", "## All variants against the baseline", ""] + glance_table(r)
    for v in r.variants:
        out += variant_section(r, v, "##" if one else "###")
    out += [
        "",
        "## Every measurement",
        "",
        "| model | metric | value [95% CI] | n | status | how |",
        "|---|---|---|---|---|---|",
    ]
    out += _measurement_rows(r.baseline.measurements, "baseline")
    for v in r.variants:
        out += _measurement_rows(v.record.measurements, v.name)
    out += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in r.definitions.items()]
    notes = r.notes + (r.variants[0].notes if one else [])
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(out + provenance(r)) + "\n"


def provenance(r: Report) -> list[str]:
    env = r.environment
    out = [
        "",
        "## Provenance",
        "",
        f"- Recipe sha256 `{r.recipe.get('_sha256', '?')}`, seed {r.recipe.get('seed')}; "
        f"run `{r.run.get('id')}` started {r.run.get('started_at')}, "
        f"{r.run.get('wall_s', 0):.0f} s.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()),
        f"- Machine: {env.get('cpu')}, {env.get('cores')} cores, {env.get('platform')}.",
    ]
    if r.run.get("migrated_from_schema"):
        out.append(f"- Read from a schema v{r.run['migrated_from_schema']} report.json.")
    out += [_data_line(d) for d in r.data]
    return out


def _data_line(d: dict) -> str:
    line = f"- Data `{d.get('name')}` from {d.get('location')}: text sha256 "
    line += f"`{d.get('text_sha256', '?')[:16]}...`"
    if "spec_sha256" in d:  # an eval task: its spec file and how many items were scored
        return (
            line
            + f", spec {d.get('spec')} sha256 `{d['spec_sha256'][:16]}...`, "
            + (f"{d.get('items')} items")
        )
    return line + f", token ids sha256 `{str(d.get('token_ids_sha256', '?'))[:16]}...`"


def flips_section(v: VariantResult, show: int = 20) -> list[str]:
    """Task metrics item by item: how many items flipped each way, McNemar's p, which ones."""
    rows = [c for c in v.comparisons if c.flips is not None]
    if not rows:
        return []
    out = ["", "Items that changed against the baseline (same items, paired):", ""]
    for c in rows:
        lost, gained = c.flips.get("lost", []), c.flips.get("gained", [])
        p = "n/a" if c.p_value is None else f"{c.p_value:.3g}"
        out.append(
            f"- {c.metric}: {len(lost)} right before and wrong now, {len(gained)} the reverse "
            f"(McNemar exact p = {p}, n = {c.n}); lost items {_first(lost, show)}; gained "
            f"{_first(gained, show)}"
        )
    return out


def _first(idx: list[int], show: int) -> str:
    head = ", ".join(str(i) for i in idx[:show])
    return f"[{head}{', ...' if len(idx) > show else ''}]" if idx else "none"

"""The report page's figures: matplotlib on Agg, each returned as an inline <svg> with the
numbers it plots. Bars never stand for a missing value: an unavailable measurement draws
nothing (the page lists it with its reason). matplotlib is imported only when drawing."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from compress.metrics import is_relative
from compress.report.html_base import figure_svg, pyplot
from compress.report.schema import Measurement, Report, RunRecord

_MIB = 1024 * 1024
BASELINE_COLOUR = "#6e7781"
COLOURS = ("#0969da", "#e16f24", "#1a7f37", "#8250df", "#bf3989", "#1b7c83", "#9a6700")
VERDICT_COLOURS = {
    "better": "#1a7f37",
    "worse": "#cf222e",
    "no significant change": "#8c959f",
    "unknown": "#d0d7de",
}
#: bar groups in page order -> heading
GROUPS = {
    "latency": "Latency",
    "throughput": "Throughput",
    "memory": "Memory",
    "energy": "Energy",
    "cost": "Cost",
    "quality": "Quality",
}
#: KLD statistics plotted, in order: name -> short label
KLD_STATS = {
    "kld.mean": "mean",
    "kld.median": "median",
    "kld.p90": "p90",
    "kld.p95": "p95",
    "kld.p99": "p99",
    "kld.p99_9": "p99.9",
    "kld.max": "max",
}
_RC = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "hatch.linewidth": 0.6,
}
_SUFFIX = re.compile(r"^(?P<base>.+)@(?P<kind>bs|p)(?P<n>[0-9]+)$")


@dataclass(frozen=True)
class Series:
    """One model on the page: the baseline or a variant, with its colour."""

    label: str
    record: RunRecord
    colour: str
    control: bool = False

    @property
    def legend(self) -> str:
        return f"{self.label} (control)" if self.control else self.label


@dataclass
class Plot:
    """A drawn figure: `svg` is figure_svg output; `rows` the numbers it shows."""

    id: str
    title: str
    caption: str
    svg: str
    rows: list[dict[str, Any]] = field(default_factory=list)


def series_of(report: Report) -> list[Series]:
    """The baseline, then each variant, each with a fixed colour."""
    out = [Series("baseline", report.baseline, BASELINE_COLOUR)]
    for i, v in enumerate(report.variants):
        out.append(Series(v.name, v.record, COLOURS[i % len(COLOURS)], v.control))
    return out


def split_workload(name: str) -> tuple[str, str]:
    """'decode.tokens_per_s@bs8' -> ('decode.tokens_per_s', 'bs8'); no suffix -> (name, '')."""
    m = _SUFFIX.match(name)
    return (m["base"], f"{m['kind']}{m['n']}") if m else (name, "")


def _workload_key(suffix: str) -> tuple[int, int]:
    if not suffix:
        return (0, 1)
    kind, n = ("bs", suffix[2:]) if suffix.startswith("bs") else ("p", suffix[1:])
    return (0 if kind == "bs" else 1, int(n))


def metric_group(name: str, unit: str) -> str | None:
    """Which bar figure a measurement belongs to (None: relative to the baseline, no bar)."""
    if is_relative(name) or name.startswith("kld."):
        return None
    prefix = name.partition(".")[0]
    if prefix in ("energy", "cost"):
        return prefix
    return {"bytes": "memory", "ms": "latency", "tokens/s": "throughput"}.get(unit, "quality")


def scale(unit: str) -> tuple[float, str]:
    """Plotting factor and axis unit: bytes as MiB, fractions as percent."""
    if unit == "bytes":
        return 1 / _MIB, "MiB"
    if unit == "fraction":
        return 100.0, "%"
    return 1.0, unit or "value"


def _errors(value: float, ci: list[float] | None, factor: float = 1.0) -> tuple[float, float]:
    """Asymmetric error bar lengths from an interval, never negative (0 without one)."""
    if not ci or not all(math.isfinite(x) for x in ci):
        return 0.0, 0.0
    lo, hi = (min(ci) * factor, max(ci) * factor)
    return max(value - lo, 0.0), max(hi - value, 0.0)


def _usable(m: Measurement | None) -> bool:
    return (
        m is not None
        and m.status != "unavailable"
        and m.value is not None
        and math.isfinite(m.value)
    )


def _t(text: str) -> str:
    """Report text as matplotlib text: a '$' is a dollar sign, never the start of math."""
    return text.replace("$", r"\$")


def _row(series: str, m: Measurement) -> dict[str, Any]:
    """A plotted number: series, metric, value, unit, ci95, n, status."""
    return {
        "series": series,
        "metric": m.name,
        "value": m.value,
        "unit": m.unit,
        "ci95": m.ci95,
        "n": m.n,
        "status": m.status,
    }


def _draw(plot_id: str, title: str, caption: str, build: Callable[[Any], Any]) -> Plot:
    """Run `build(plt) -> (fig, rows)` under the page's rc settings, as an inline SVG."""
    plt = pyplot()
    with plt.rc_context(_RC):
        fig, rows = build(plt)
        svg = figure_svg(fig)
    return Plot(plot_id, title, caption, clean_svg(svg, plot_id, title), rows)


_ID = re.compile(r'\bid="([^"]+)"')


def clean_svg(svg: str, prefix: str, label: str = "") -> str:
    """Prefix element ids so several inline SVGs on one page never share one, and label the
    drawing for screen readers."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", prefix)
    ids = sorted(set(_ID.findall(svg)), key=len, reverse=True)
    if ids:
        alt = "|".join(re.escape(i) for i in ids)
        ref = re.compile(rf'(id="|#)({alt})(?=["\)])')
        svg = ref.sub(lambda m: f"{m[1]}{safe}-{m[2]}", svg)
    aria = f'<svg role="img" aria-label="{html.escape(label, quote=True)}"'
    return svg.replace("<svg", aria, 1)


def _log_axis(axis, set_scale, values: list[float]) -> None:
    """A log scale labelled in plain numbers (0.5, 1, 2) at 1-2-5 steps, where the values
    are positive and span more than a factor of 4 (a narrower range stays linear)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if not values or min(values) <= 0 or max(values) / min(values) <= 4:
        return
    set_scale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def _grid(plt, n: int, width: float = 3.7, height: float = 2.7):
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows + 0.5))
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _legend(fig, series: list[Series]) -> None:
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=s.colour, edgecolor="#24292f", hatch="//" if s.control else None)
        for s in series
    ]
    fig.legend(
        handles,
        [_t(s.legend) for s in series],
        loc="upper center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=min(len(series), 6),
        frameon=False,
    )


def bar_plots(series: list[Series]) -> dict[str, Plot]:
    """One figure per group (latency, throughput, ...): a panel per metric, workloads
    (bsN, pN) along x, one bar per model with its 95% interval; group -> Plot."""
    table: dict[str, dict[str, dict[str, dict[str, Measurement]]]] = {}
    for s in series:
        for m in s.record.measurements:
            group = metric_group(m.name, m.unit)
            if group is None or not _usable(m):
                continue
            base, suffix = split_workload(m.name)
            table.setdefault(group, {}).setdefault(base, {}).setdefault(suffix, {})
            table[group][base][suffix][s.label] = m
    out = {}
    for group in GROUPS:
        if group in table:
            out[group] = _bar_figure(group, table[group], series)
    return out


def _bar_figure(group: str, panels: dict, series: list[Series]) -> Plot:
    def build(plt):
        fig, axes = _grid(plt, len(panels))
        rows: list[dict[str, Any]] = []
        for ax, (base, cells) in zip(axes, panels.items(), strict=True):
            _bar_panel(ax, base, cells, series, rows)
        _legend(fig, series)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
        return fig, rows

    n = sorted({m.n for cells in panels.values() for by in cells.values() for m in by.values()})
    ns = f"{n[0]}" if len(n) == 1 else f"{n[0]} to {n[-1]}"
    caption = (
        "Bars: each model's value (the statistic named in its method); whiskers: its 95% "
        "interval (none where the value is counted). x: bsN = batch size N (no suffix: "
        f"batch 1), pN = a prompt of N tokens. Hatched: a control; pale: an estimate. n = "
        f"{ns} per bar; models without a value draw no bar."
    )
    return _draw(f"bars-{group}", f"{GROUPS[group]}: baseline and variants", caption, build)


def _bar_panel(ax, base: str, cells: dict, series: list[Series], rows: list) -> None:
    suffixes = sorted(cells, key=_workload_key)
    unit = next(iter(next(iter(cells.values())).values())).unit
    factor, label = scale(unit)
    width = 0.8 / len(series)
    ticks: list[tuple[float, str]] = []
    for i, s in enumerate(series):
        for j, suffix in enumerate(suffixes):
            m = cells[suffix].get(s.label)
            if m is None:
                continue
            x = j + (i - (len(series) - 1) / 2) * width
            v = m.value * factor
            lo, hi = _errors(v, m.ci95, factor)
            ax.bar(
                x,
                v,
                width,
                color=s.colour,
                alpha=0.5 if m.status == "estimated" else 1.0,
                edgecolor="#24292f",
                linewidth=0.4,
                hatch="//" if s.control else None,
                yerr=[[lo], [hi]],
                capsize=2,
                error_kw={"elinewidth": 0.8, "ecolor": "#24292f"},
            )
            rows.append(_row(s.label, m))
            ticks.append((x, s.label))
    if suffixes == [""]:
        ax.set_xticks([t[0] for t in ticks], [_t(t[1]) for t in ticks], rotation=30, ha="right")
        ax.set_xlabel("model")
    else:
        ax.set_xticks(range(len(suffixes)), [s or "bs1" for s in suffixes])
        kinds = {
            "batch size (bsN)" if _workload_key(s)[0] == 0 else "prompt (pN)" for s in suffixes
        }
        ax.set_xlabel(" / ".join(sorted(kinds)))
    ax.set_ylabel(label)
    if all(m.value >= 0 for by in cells.values() for m in by.values()):
        ax.set_ylim(bottom=0)  # bars start at zero
    ax.set_title(_t(base))

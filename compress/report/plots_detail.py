"""The report page's detail figures: latency distributions per batch size, KL divergence
percentiles, each variant's ratios to the baseline, and task flips. Shared drawing helpers
and the before/after bars are in `plots`."""

from __future__ import annotations

import math
from typing import Any

from compress.report.plots import (
    KLD_STATS,
    VERDICT_COLOURS,
    Plot,
    Series,
    _draw,
    _errors,
    _log_axis,
    _row,
    _t,
    _usable,
    _workload_key,
    split_workload,
)
from compress.report.schema import VariantResult


def latency_plots(series: list[Series], base: str = "decode.latency_ms_per_token") -> list[Plot]:
    """Per batch size: each model's per-process decode step times as a box and points,
    with its p90 and p99 step time where measured."""
    suffixes = {
        split_workload(m.name)[1]
        for s in series
        for m in s.record.measurements
        if split_workload(m.name)[0] == base and m.samples and not m.name.count("@p")
    }
    return [_latency_plot(series, base, sfx) for sfx in sorted(suffixes, key=_workload_key)]


def _latency_plot(series: list[Series], base: str, suffix: str) -> Plot:
    at = f"@{suffix}" if suffix else ""
    batch = suffix[2:] if suffix else "1"
    present = [(s, s.record.get(base + at)) for s in series]
    present = [(s, m) for s, m in present if m is not None and m.samples]

    def build(plt):
        from matplotlib.lines import Line2D

        fig, ax = plt.subplots(figsize=(max(3.2, 1.1 * len(present) + 1.5), 3.2))
        rows: list[dict[str, Any]] = []
        for x, (s, m) in enumerate(present):
            box = ax.boxplot(
                [m.samples],
                positions=[x],
                widths=0.5,
                showfliers=False,
                patch_artist=True,
                medianprops={"color": "#24292f"},
            )
            for patch in box["boxes"]:
                patch.set(facecolor=s.colour, alpha=0.35, edgecolor="#24292f")
            k = len(m.samples)
            offs = [0.0] if k == 1 else [-0.12 + 0.24 * i / (k - 1) for i in range(k)]
            ax.scatter(
                [x + o for o in offs],
                m.samples,
                s=14,
                color=s.colour,
                edgecolors="#24292f",
                linewidths=0.4,
                zorder=3,
            )
            rows.append(_row(s.label, m))
            for name, marker in (
                (f"decode.latency_ms_p90{at}", "D"),
                (f"decode.latency_ms_p99{at}", "X"),
            ):
                q = s.record.get(name)
                if _usable(q):
                    ax.scatter(
                        [x + 0.32], [q.value], marker=marker, s=22, color="#24292f", zorder=4
                    )
                    rows.append(_row(s.label, q))
        ax.set_xticks(
            range(len(present)), [_t(s.legend) for s, _ in present], rotation=30, ha="right"
        )
        ax.set_xlabel("model")
        ax.set_ylabel("ms per decode step")
        ax.set_title(f"decode step time, batch {batch}")
        dot = {"linestyle": "none", "color": "#24292f"}
        handles = [
            Line2D([], [], marker="o", markerfacecolor="none", **dot),
            Line2D([], [], marker="D", **dot),
            Line2D([], [], marker="X", **dot),
        ]
        ax.legend(
            handles,
            ["one process (p50)", "p90", "p99"],
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            frameon=False,
        )
        return fig, rows

    ns = ", ".join(f"{s.label} {len(m.samples)}" for s, m in present)
    caption = (
        f"Decode step time at batch {batch}: each point is one fresh process's median (p50) "
        "step time; boxes: quartiles over those processes; diamond p90, cross p99 step time "
        f"(across processes, as reported) where measured. n (processes): {ns}."
    )
    return _draw(f"latency-{suffix or 'bs1'}", f"Decode latency at batch {batch}", caption, build)


def kld_plot(series: list[Series]) -> Plot | None:
    """The per-token KL divergence statistics of each variant, log scale where positive."""
    have = [
        (s, [(n, s.record.get(n)) for n in KLD_STATS if _usable(s.record.get(n))])
        for s in series[1:]
    ]
    have = [(s, pts) for s, pts in have if pts]
    if not have:
        return None
    names = [n for n in KLD_STATS if any(n == p[0] for _, pts in have for p in pts)]

    def build(plt):
        fig, ax = plt.subplots(figsize=(max(4.0, 0.75 * len(names) + 2.5), 3.2))
        rows: list[dict[str, Any]] = []
        width = 0.5 / len(have)
        for i, (s, pts) in enumerate(have):
            xs = [names.index(n) + (i - (len(have) - 1) / 2) * width for n, _ in pts]
            ys = [m.value for _, m in pts]
            err = list(zip(*(_errors(m.value, m.ci95) for _, m in pts), strict=True))
            ax.errorbar(
                xs, ys, yerr=err, fmt="o", color=s.colour, capsize=2, ms=4, label=_t(s.legend)
            )
            rows += [_row(s.label, m) for _, m in pts]
        _log_axis(ax.yaxis, ax.set_yscale, [r["value"] for r in rows])
        ax.set_xticks(range(len(names)), [KLD_STATS[n] for n in names])
        ax.set_xlabel("statistic of the per-token KL divergence")
        ax.set_ylabel("KL(baseline || variant), nats/token")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        return fig, rows

    windows = {s.label: s.record.get("kld.mean").n for s, _ in have if s.record.get("kld.mean")}
    ns = ", ".join(f"{k} {v}" for k, v in windows.items()) or "see the table"
    caption = (
        "KL(baseline || variant) per token on the same windows: the mean over windows, then "
        "percentiles over every scored token and the maximum; whiskers: 95% intervals (a "
        f"bootstrap over windows for percentiles, none for the maximum). n (windows): {ns}."
    )
    return _draw("kld", "KL divergence from the baseline", caption, build)


def ratio_plot(v: VariantResult, index: int) -> Plot | None:
    """Every comparison of one variant as compressed / baseline with its 95% interval,
    coloured by verdict, against the line at 1."""
    comps = [c for c in v.comparisons if c.ratio is not None and math.isfinite(c.ratio)]
    if not comps:
        return None

    def build(plt):
        from matplotlib.lines import Line2D

        fig, ax = plt.subplots(figsize=(7.5, 0.24 * len(comps) + 1.2))
        ys = list(range(len(comps)))[::-1]
        rows: list[dict[str, Any]] = []
        for y, c in zip(ys, comps, strict=True):
            lo, hi = _errors(c.ratio, c.ratio_ci95)
            ax.errorbar(
                [c.ratio],
                [y],
                xerr=[[lo], [hi]],
                fmt="o",
                ms=4,
                capsize=2,
                color=VERDICT_COLOURS[c.verdict],
            )
            rows.append(
                {
                    "series": v.name,
                    "metric": c.metric,
                    "value": c.ratio,
                    "unit": "ratio",
                    "ci95": c.ratio_ci95,
                    "n": c.n,
                    "status": c.verdict,
                }
            )
        bounds = [b for c in comps for b in (c.ratio, *(c.ratio_ci95 or ())) if math.isfinite(b)]
        _log_axis(ax.xaxis, ax.set_xscale, bounds)
        ax.axvline(1.0, color="#24292f", linewidth=0.8)
        ax.set_yticks(ys, [_t(c.metric) for c in comps])
        ax.set_ylim(-0.7, len(comps) - 0.3)
        ax.set_xlabel("compressed / baseline (ratio, 95% interval)")
        ax.set_ylabel("metric")
        seen = [k for k in VERDICT_COLOURS if any(c.verdict == k for c in comps)]
        handles = [
            Line2D([], [], marker="o", linestyle="none", color=VERDICT_COLOURS[k]) for k in seen
        ]
        ax.legend(handles, seen, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        return fig, rows

    caption = (
        f"{v.name}: each comparison's ratio compressed / baseline with its 95% interval, "
        "coloured by verdict. Left of 1 is lower: better for latency, memory, cost and "
        "perplexity, worse for throughput and accuracy."
    )
    return _draw(f"ratios-{index}", f"Ratios to the baseline: {v.name}", caption, build)


def flips_plot(variants: list[VariantResult]) -> Plot | None:
    """Task items that changed against the baseline: lost (left) and gained (right)."""
    items = [(v, c) for v in variants for c in v.comparisons if c.flips is not None]
    if not items:
        return None

    def build(plt):
        fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(items) + 1.2))
        ys = list(range(len(items)))[::-1]
        lost = [len(c.flips.get("lost", [])) for _, c in items]
        gained = [len(c.flips.get("gained", [])) for _, c in items]
        bars = ax.barh(ys, [-n for n in lost], color=VERDICT_COLOURS["worse"], label="lost")
        ax.bar_label(bars, labels=[str(n) for n in lost], padding=2, fontsize=7)
        bars = ax.barh(ys, gained, color=VERDICT_COLOURS["better"], label="gained")
        ax.bar_label(bars, labels=[str(n) for n in gained], padding=2, fontsize=7)
        ax.axvline(0, color="#24292f", linewidth=0.8)
        ax.set_yticks(ys, [_t(f"{v.name}: {c.metric}") for v, c in items])
        ax.set_xlabel("items: lost (right before, wrong now) | gained")
        ax.set_ylabel("variant: task metric")
        ax.margins(x=0.15)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        rows = [
            {
                "series": v.name,
                "metric": c.metric,
                "value": float(k),
                "unit": "items",
                "ci95": None,
                "n": c.n,
                "status": side,
            }
            for (v, c), lost_n, gained_n in zip(items, lost, gained, strict=True)
            for side, k in (("lost", lost_n), ("gained", gained_n))
        ]
        return fig, rows

    caption = (
        "Items of each task scored on both models that changed: lost items were right before "
        "and are wrong now, gained items the reverse (McNemar's test in the table)."
    )
    return _draw("flips", "Task items that flipped", caption, build)

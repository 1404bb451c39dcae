"""The Pareto front of quality loss (x, lower is better) against cost saving (y, higher is
better) over the rows of `runs.build_rows`, and its plot as inline SVG.

The front is computed on the point estimates. The baseline takes part as (0, 0), so a variant
that costs more and scores worse than not compressing is never on it; controls never are.
"""

from __future__ import annotations

from compress.report.html_base import figure_svg, pyplot
from compress.report.runs import Key, Row

#: what each place on the plot looks like: colour, marker, size, legend text
STYLES = {
    "front": ("#c0392b", "o", 8.0, "Pareto front (point estimates)"),
    "near front": ("#e08e0b", "o", 7.0, "dominated, intervals overlap the front"),
    "dominated": ("#2f6db5", "o", 6.0, "dominated"),
    "control": ("#8a8a8a", "s", 6.0, "control (not ranked)"),
}
_FONT = 7.5  # label size, points
_STEP = 9.5  # vertical step between stacked labels, points


# -- the front ----------------------------------------------------------------------------
def _ranked(rows: list[Row]) -> list[Row]:
    """The rows that take part in the front: plotted, not controls (the baseline does)."""
    return [r for r in rows if r.plotted and r.kind != "control"]


def _xy(r: Row) -> tuple[float, float]:
    assert r.quality_loss is not None and r.cost_saving is not None
    return r.quality_loss, r.cost_saving


def dominates(a: Row, b: Row) -> bool:
    """`a` loses no more quality and saves no less than `b`, and is strictly better in one."""
    (la, sa), (lb, sb) = _xy(a), _xy(b)
    return la <= lb and sa >= sb and (la < lb or sa > sb)


def pareto_front(rows: list[Row]) -> set[Key]:
    """Keys of the non-dominated rows on the point estimates: no other ranked row has a loss
    as low and a saving as high, one strictly. Controls and unplotted rows are left out; the
    baseline takes part as (0, 0). Tied points are all on the front."""
    ranked = _ranked(rows)
    return {r.key for r in ranked if not any(dominates(q, r) for q in ranked)}


def _box(r: Row) -> tuple[tuple[float, float], tuple[float, float]]:
    loss, saving = _xy(r)
    return r.quality_loss_ci95 or (loss, loss), r.cost_saving_ci95 or (saving, saving)


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def near_front(rows: list[Row], front: set[Key]) -> set[Key]:
    """Keys of dominated ranked rows whose 95% intervals overlap a front row's on both axes
    (a point without an interval is its own): not distinguishable from the front."""
    ranked = _ranked(rows)
    on = [_box(r) for r in ranked if r.key in front]
    out = set()
    for r in ranked:
        if r.key in front:
            continue
        loss, saving = _box(r)
        if any(_overlap(loss, q[0]) and _overlap(saving, q[1]) for q in on):
            out.add(r.key)
    return out


def pareto_status(rows: list[Row]) -> dict[Key, str]:
    """Each row's place: 'front', 'near front', 'dominated', 'control' or 'not plotted'."""
    front = pareto_front(rows)
    near = near_front(rows, front)
    out = {}
    for r in rows:
        if not r.plotted:
            out[r.key] = "not plotted"
        elif r.kind == "control":
            out[r.key] = "control"
        elif r.key in front:
            out[r.key] = "front"
        else:
            out[r.key] = "near front" if r.key in near else "dominated"
    return out


def front_rows(rows: list[Row]) -> list[Row]:
    """The front's rows from the lowest loss to the highest (then the highest saving)."""
    front = pareto_front(rows)
    return sorted((r for r in rows if r.key in front), key=lambda r: (_xy(r)[0], -_xy(r)[1]))


# -- the plot -----------------------------------------------------------------------------
def _err(value: float, ci: tuple[float, float] | None) -> list[list[float]] | None:
    if ci is None:
        return None
    return [[max(0.0, value - ci[0])], [max(0.0, ci[1] - value)]]


def _text(s: str) -> str:
    """Plain text for matplotlib: '$' would start mathtext."""
    return s.replace("$", r"\$")


def _draw_points(ax, rows: list[Row], status: dict[Key, str]) -> set[str]:
    """Error bars in both directions and the marker of every plotted non-baseline row;
    returns the places drawn (for the legend)."""
    drawn = set()
    for r in rows:
        if not r.plotted or r.kind == "baseline":
            continue
        place = status[r.key]
        color, marker, size, _ = STYLES[place]
        x, y = _xy(r)
        ax.errorbar(
            [x],
            [y],
            xerr=_err(x, r.quality_loss_ci95),
            yerr=_err(y, r.cost_saving_ci95),
            fmt=marker,
            color=color,
            ms=size,
            mfc="white" if r.saving_basis == "latency" else color,
            mew=1.4,
            elinewidth=1.0,
            capsize=2.5,
            alpha=0.95,
            zorder=4 if place == "front" else 3,
        )
        drawn.add(place)
    return drawn


def _draw_front(ax, rows: list[Row]) -> None:
    """The front as a step line: the best saving reachable at each loss."""
    pts = [_xy(r) for r in front_rows(rows)]
    if len(pts) > 1:
        xs, ys = zip(*pts, strict=True)
        ax.step(xs, ys, where="post", color=STYLES["front"][0], lw=1.1, ls="--", zorder=2)


def _overlaps(box, placed) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in placed)


def _label_points(ax, labels: list[tuple[float, float, str]], dpi: float) -> None:
    """Label every point beside it; a label that would cover another moves down in steps,
    joined to its point by a thin line."""
    to_pt = 72.0 / dpi
    placed: list[tuple[float, float, float, float]] = []
    pts = [(*ax.transData.transform((x, y)), text) for x, y, text in labels]
    for px, py, text in sorted(pts, key=lambda p: (-p[1], p[0], p[2])):
        x, y = px * to_pt, py * to_pt  # points
        width = 0.56 * _FONT * len(text)
        dy = 3.0
        for _ in range(12):
            box = (x + 5, y + dy, x + 5 + width, y + dy + _FONT)
            if not _overlaps(box, placed):
                break
            dy -= _STEP
        placed.append(box)
        far = abs(dy - 3.0) > 0.1
        ax.annotate(
            _text(text),
            ax.transData.inverted().transform((px, py)),
            xytext=(5, dy),
            textcoords="offset points",
            fontsize=_FONT,
            color="#222222",
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "#999999"} if far else None,
            zorder=5,
        )


def _legend(ax, drawn: set[str], hollow: bool) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="", marker=m, color=c, ms=s * 0.8, label=text)
        for place, (c, m, s, text) in STYLES.items()
        if place in drawn
    ]
    handles.append(Line2D([], [], ls="", marker="*", color="black", ms=10, label="baseline"))
    if hollow:
        label = "hollow: saving from decode latency (no price)"
        handles.append(Line2D([], [], ls="", marker="o", color="#555555", mfc="white", label=label))
    ax.legend(handles=handles, loc="best", fontsize=7, framealpha=0.9)


def _axes_labels(ax, rows: list[Row]) -> None:
    from matplotlib.ticker import PercentFormatter

    shown = [r for r in rows if r.plotted and r.kind != "baseline"]
    sizes = sorted({r.saving_batch for r in shown if r.saving_batch is not None})
    at = f"at batch {sizes[0]}" if len(sizes) == 1 else "at each run's headline batch"
    y = f"serving-cost saving per token {at}: 1 - cost ratio (higher is better)"
    if any(r.saving_basis == "latency" for r in shown):
        y = f"saving per token {at}: 1 - cost ratio, or 1 - decode latency ratio (higher better)"
    ax.set_xlabel("quality loss: perplexity increase, ratio - 1 (lower is better)", fontsize=8.5)
    ax.set_ylabel(y, fontsize=8.5)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
    ax.tick_params(labelsize=7.5)


def _draw(ax, rows: list[Row], status: dict[Key, str], dpi: float) -> None:
    """Everything on the axes: reference lines, points, front, baseline, labels, legend."""
    ax.axhline(0.0, color="#bbbbbb", lw=0.8, zorder=1)
    ax.axvline(0.0, color="#bbbbbb", lw=0.8, zorder=1)
    ax.grid(True, lw=0.4, alpha=0.5, zorder=0)
    drawn = _draw_points(ax, rows, status)
    _draw_front(ax, rows)
    ax.plot([0.0], [0.0], ls="", marker="*", ms=14, color="black", zorder=6)
    _axes_labels(ax, rows)
    ax.margins(0.12)
    ax.autoscale_view()
    bases = [r.run for r in rows if r.kind == "baseline"]
    base_label = "baseline" if len(bases) == 1 else f"baselines of {', '.join(bases)}"
    labels = [(*_xy(r), r.label) for r in rows if r.plotted and r.kind != "baseline"]
    _label_points(ax, [(0.0, 0.0, base_label), *labels], dpi)
    hollow = any(r.saving_basis == "latency" and r.plotted for r in rows)
    _legend(ax, drawn, hollow)


def pareto_svg(rows: list[Row]) -> str:
    """The Pareto plot as an inline <svg>: one point per plotted variant with 95% intervals
    as error bars in both directions, the front highlighted and joined by a step line, the
    baseline a star at (0, 0), every point labelled 'run/variant'."""
    status = pareto_status(rows)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.6), dpi=100)
    try:
        _draw(ax, rows, status, fig.dpi)
    except BaseException:
        plt.close(fig)
        raise
    return figure_svg(fig)

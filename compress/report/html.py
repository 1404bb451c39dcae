"""report.html: the report as one self-contained page (inline CSS and SVG figures, no
script, nothing fetched). It carries what report.md carries, drawn where a figure helps, and
marks its key numbers for machines: `data-value` holds the float's repr (exact round trip,
"null" for none) beside the text a reader sees."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from compress.report.html_base import render_template
from compress.report.markdown import (
    _STATUS,
    COLUMNS_NOTE,
    _cell,
    _first,
    _iv,
    _pm,
    _ratio,
    _unit_label,
    cost_section,
    divergence_summary,
    fmt,
)
from compress.report.plots import KLD_STATS
from compress.report.schema import Comparison, GateResult, Measurement, Report, VariantResult

log = logging.getLogger(__name__)

#: exit code -> CSS status class
STATUS_CLASS = {0: "pass", 1: "fail", 2: "fail", 3: "inconclusive"}
VERDICT_CLASS = {
    "better": "better",
    "worse": "worse",
    "no significant change": "ns",
    "unknown": "unknown",
}
#: KLD table columns: measurement -> heading (the plotted statistics, then the top-1 rates)
KLD_COLUMNS = {
    **KLD_STATS,
    "kld.mean": "mean ± stderr",
    "kld.same_top1": "same top-1 (tokens)",
    "kld.top1_agreement": "top-1 agreement (windows)",
}
SHOW_FLIPS = 20


def num(v: float | None) -> str:
    """A number for `data-value`: repr of the float (round-trips exactly), "null" for None."""
    return "null" if v is None else repr(float(v))


def _num(v: float | None, unit: str, iv: list[float] | None = None, text: str = "") -> dict:
    """A number cell: the text a reader sees, its interval, and the exact values."""
    return {
        "text": text or fmt(v, unit),
        "iv": _iv(iv, unit).strip(),
        "value": num(v),
        "lo": num(iv[0]) if iv else None,
        "hi": num(iv[1]) if iv else None,
    }


def status_of(report: Report) -> tuple[str, str]:
    """The page's verdict and its CSS class; a failed run says so whatever its gates say."""
    if report.run.get("status") == "failed":
        return "RUN FAILED", "fail"
    code = report.exit_code
    return _STATUS.get(code, str(code)), STATUS_CLASS.get(code, "fail")


def render_html(report: Report) -> str:
    """report.html for `report`: one complete HTML page, the same bytes for the same report."""
    from compress.report import plots, plots_detail, plots_train

    series = plots.series_of(report)
    status, status_class = status_of(report)
    one = len(report.variants) == 1
    variants = [_variant(report, v, i, series[i + 1].colour) for i, v in enumerate(report.variants)]
    page = render_template(
        "report.html.j2",
        title=str(report.recipe.get("name", "?")),
        description=str(report.recipe.get("description") or ""),
        status=status,
        status_class=status_class,
        exit_code=report.exit_code,
        schema_version=report.schema_version,
        model=_model(report),
        summary=[_summary(v) for v in report.variants],
        groups=_groups(series),
        latency=[_figure(p) for p in plots_detail.latency_plots(series)],
        glance=None if one else _glance(report),
        variants=variants,
        training=plots_train.training_section(report),
        kld=_kld(report, plots_detail.kld_plot(series)),
        flips=_flips(report, plots_detail.flips_plot(report.variants)),
        measurements=_measurements(series),
        definitions=sorted(report.definitions.items()),
        notes=report.notes + (report.variants[0].notes if one else []),
        provenance=_provenance(report),
    )
    log.debug("report.html for %s: %d characters", report.run.get("id"), len(page))
    return page


def _model(r: Report) -> dict[str, str]:
    src = r.baseline.model
    return {"spec": str(src.get("spec") or "?"), "note": str(src.get("note") or "")}


def _summary(v: VariantResult) -> dict[str, Any]:
    code = v.exit_code
    return {
        "name": v.name,
        "control": v.control,
        "description": v.description,
        "status": _STATUS.get(code, str(code)),
        "status_class": STATUS_CLASS.get(code, "fail"),
        "exit_code": code,
        "headline": v.cost.headline if v.cost else "",
    }


def _figure(p: Any) -> dict[str, Any] | None:
    """A Plot for the template, with the numbers it plots as rows."""
    if p is None:
        return None
    rows = [
        {
            "series": r["series"],
            "metric": r["metric"],
            "n": "n/a" if r["n"] is None else r["n"],
            "status": r["status"],
            **_num(
                r["value"], _plain_unit(r["unit"]), r["ci95"], _with_unit(r["value"], r["unit"])
            ),
        }
        for r in p.rows
    ]
    return {"id": p.id, "title": p.title, "caption": p.caption, "svg": p.svg, "rows": rows}


def _plain_unit(unit: str) -> str:
    return "" if unit in ("ratio", "items") else unit


def _with_unit(v: float | None, unit: str) -> str:
    """A value as a reader sees it, with its unit (MiB, % and counts need none)."""
    if v is not None and unit == "ratio":
        return f"{v:.3f}x"
    if v is not None and unit == "items":
        return f"{v:.0f}"
    text = fmt(v, unit)
    return text if v is None or unit in ("bytes", "fraction", "") else f"{text} {unit}"


def _groups(series: list) -> list[dict[str, Any]]:
    """The before/after figures by group, each with what could not be measured in it."""
    from compress.report import plots

    figures = plots.bar_plots(series)
    missing: dict[str, dict[tuple[str, str], list[str]]] = {}
    for s in series:
        for m in s.record.measurements:
            group = plots.metric_group(m.name, m.unit)
            if group and (m.status == "unavailable" or m.value is None):
                key = (m.name, m.reason or "no reason given")
                missing.setdefault(group, {}).setdefault(key, []).append(s.label)
    out = []
    for group, title in plots.GROUPS.items():
        if group not in figures and group not in missing:
            continue
        gone = [
            {"metric": name, "reason": reason, "models": models}
            for (name, reason), models in missing.get(group, {}).items()
        ]
        out.append(
            {"id": group, "title": title, "plot": _figure(figures.get(group)), "missing": gone}
        )
    return out


def _glance(r: Report) -> dict[str, Any]:
    """Every compared metric, one column per variant (report.md's first table)."""
    names = list(dict.fromkeys(c.metric for v in r.variants for c in v.comparisons))
    rows = []
    for name in names:
        cs = [v.comparison(name) for v in r.variants]
        first = next(c for c in cs if c is not None)
        rows.append(
            {
                "metric": name,
                "unit": _unit_label(first.unit),
                "better": "higher" if first.higher_is_better else "lower",
                "baseline": fmt(first.baseline, first.unit),
                "cells": [
                    {"text": _cell(c), "verdict": VERDICT_CLASS[c.verdict] if c else "unknown"}
                    for c in cs
                ],
            }
        )
    heads = [{"name": v.name, "control": v.control} for v in r.variants]
    return {"variants": heads, "rows": rows}


def _variant(r: Report, v: VariantResult, index: int, colour: str) -> dict[str, Any]:
    """One variant's section: stages, before/after table and ratios, gates, cost, notes."""
    from compress.report import plots_detail

    stages = [
        {
            "method": str(s.get("method")),
            "summary": str(s.get("summary", "")),
            "kernel": str(s.get("kernel") or ""),
            "seconds": f"{s.get('seconds') or 0:.1f}",
            "notes": [str(n) for n in s.get("notes", [])],
        }
        for s in v.record.stages
    ]
    cost = None
    if v.cost is not None:
        lines = cost_section(v, "##")[3:]  # after "", the heading, ""
        cost = {
            "lines": [line.removeprefix("- ") for line in lines],
            "saving": num(v.cost.cost_saving_fraction),
            "quality_loss": num(v.cost.quality_loss_fraction),
        }
    divergence = divergence_summary(v.record.measurements)
    return {
        **_summary(v),
        "index": index,
        "colour": colour,
        "stages": stages,
        "setup": f"Baseline computes in {r.baseline.dtype}, this variant in {v.record.dtype}; "
        f"device {r.environment.get('device')}; quick={r.run.get('quick')}.",
        "comparisons": [_comparison(c) for c in v.comparisons],
        "columns_note": COLUMNS_NOTE if any(c.scale is not None for c in v.comparisons) else "",
        "ratios": _figure(plots_detail.ratio_plot(v, index)),
        "divergence": divergence or "",
        "gates": [_gate(g) for g in v.gates],
        "cost": cost,
        "notes": v.notes,
    }


def _comparison(c: Comparison) -> dict[str, Any]:
    head, sep, tail = _ratio(c).partition(" [")
    ratio = _num(c.ratio, "", c.ratio_ci95, text=head)
    ratio["iv"] = f"[{tail}" if sep else ""
    return {
        "metric": c.metric,
        "unit": _unit_label(c.unit),
        "better": "higher" if c.higher_is_better else "lower",
        "baseline": _num(c.baseline, c.unit),
        "compressed": _num(c.compressed, c.unit),
        "delta": _num(c.delta, c.unit, c.delta_ci95),
        "ratio": ratio,
        "verdict": c.verdict,
        "verdict_class": VERDICT_CLASS[c.verdict],
        "method": c.method,
    }


def _gate(g: GateResult) -> dict[str, Any]:
    observed = "n/a" if g.observed is None else f"{g.observed:.4g}"
    iv = g.interval
    return {
        "metric": g.metric,
        "kind": g.kind,
        "threshold": {"text": f"{g.threshold:g}", "value": num(g.threshold)},
        "observed": {
            "text": observed,
            "iv": f"[{iv[0]:.4g}, {iv[1]:.4g}]" if iv else "(no interval)",
            "value": num(g.observed),
            "lo": num(iv[0]) if iv else None,
            "hi": num(iv[1]) if iv else None,
        },
        "status": g.status,
        "explanation": g.explanation,
    }


def _kld(r: Report, plot: Any) -> dict[str, Any] | None:
    """The KL divergence table (one row per variant) and its plot, if any variant has one."""
    present = [n for n in KLD_COLUMNS if any(v.record.get(n) for v in r.variants)]
    if not present:
        return None
    rows = []
    for v in r.variants:
        ms = {n: v.record.get(n) for n in present}
        if not any(ms.values()):
            continue
        cells = [_kld_cell(n, ms[n]) for n in present]
        windows = ms.get("kld.mean") or ms.get("kld.top1_agreement")
        rows.append({"variant": v.name, "cells": cells, "windows": windows.n if windows else "n/a"})
    heads = [{"metric": n, "label": KLD_COLUMNS[n]} for n in present]
    return {"columns": heads, "rows": rows, "plot": _figure(plot)}


def _kld_cell(name: str, m: Measurement | None) -> dict[str, Any]:
    if m is None:
        return {"metric": name, **_num(None, "")}
    if name == "kld.mean":
        text = _pm(m)
    elif name == "kld.same_top1":
        text = "n/a" if m.value is None else f"{_pm(m, percent=True)}%"
    else:
        text = fmt(m.value, m.unit)
    return {"metric": name, **_num(m.value, m.unit, m.ci95, text=text)}


def _flips(r: Report, plot: Any) -> dict[str, Any] | None:
    """Task metrics item by item: lost/gained counts, McNemar's p, the first items."""
    rows = []
    for v in r.variants:
        for c in v.comparisons:
            if c.flips is None:
                continue
            lost, gained = c.flips.get("lost", []), c.flips.get("gained", [])
            rows.append(
                {
                    "variant": v.name,
                    "metric": c.metric,
                    "n": "n/a" if c.n is None else c.n,
                    "lost": len(lost),
                    "gained": len(gained),
                    "p": {
                        "text": "n/a" if c.p_value is None else f"{c.p_value:.3g}",
                        "value": num(c.p_value),
                    },
                    "lost_first": _first(lost, SHOW_FLIPS),
                    "gained_first": _first(gained, SHOW_FLIPS),
                }
            )
    return {"rows": rows, "plot": _figure(plot), "show": SHOW_FLIPS} if rows else None


def _measurements(series: list) -> list[dict[str, Any]]:
    """Every measurement of every model, as report.md's last table."""
    rows = []
    for s in series:
        for m in s.record.measurements:
            note = m.reason if m.status != "measured" and m.reason else m.method
            rows.append(
                {
                    "model": s.label,
                    "metric": m.name,
                    "value": _num(m.value, m.unit, m.ci95, text=_with_unit(m.value, m.unit)),
                    "n": m.n,
                    "status": m.status,
                    "note": note,
                }
            )
    return rows


def _plain(v: Any) -> str:
    """A provenance value as text: lists joined, mappings as sorted JSON."""
    if isinstance(v, float):
        return f"{v:.1f}" if math.isfinite(v) else str(v)
    if isinstance(v, list | tuple):
        return " ".join(_plain(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def _provenance(r: Report) -> dict[str, Any]:
    """Where the numbers come from: recipe, run, tool, versions, machine, data."""
    recipe = r.recipe
    env = r.environment
    data = [
        {
            "name": str(d.get("name", "?")),
            "fields": [(k, _plain(v), k.endswith("sha256")) for k, v in d.items() if k != "name"],
        }
        for d in r.data
    ]
    return {
        "recipe": [
            ("name", _plain(recipe.get("name", "?"))),
            ("sha256", _plain(recipe.get("_sha256", "?"))),
            ("seed", _plain(recipe.get("seed"))),
        ],
        "recipe_text": str(recipe.get("_text") or ""),
        "run": [(k, _plain(v)) for k, v in r.run.items()],
        "tool": [(k, _plain(v)) for k, v in r.tool.items()],
        "versions": [(k, _plain(v)) for k, v in (env.get("versions") or {}).items()],
        "machine": [(k, _plain(v)) for k, v in env.items() if k != "versions"],
        "data": data,
        "schema_version": r.schema_version,
        "migrated_from": r.run.get("migrated_from_schema"),
    }

"""The pages of `compress compare`: Markdown and self-contained HTML (the Pareto plot inline,
no scripts, no links), from the rows of `runs.build_rows`; and writing them, all or nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.errors import BadInput
from compress.report.ci_outputs import check_writable
from compress.report.html_base import render_template
from compress.report.io import atomic_write_text
from compress.report.pareto import STYLES, front_rows, near_front, pareto_front, pareto_status
from compress.report.pareto import pareto_svg as _svg
from compress.report.runs import QUALITY_METRIC, LoadedRun, Row, baseline_identity

log = logging.getLogger(__name__)

#: (header, Row attribute or None, interval attribute or None, kind of number)
COLUMNS: tuple[tuple[str, str, str | None, str], ...] = (
    ("run", "run", None, "text"),
    ("variant", "variant", None, "text"),
    ("methods", "methods", None, "text"),
    ("status", "status", None, "text"),
    ("cost saving [95% CI]", "cost_saving", "cost_saving_ci95", "pct"),
    ("quality loss [95% CI]", "quality_loss", "quality_loss_ci95", "pct"),
    ("decode tokens/s ratio [95% CI]", "decode_speed_ratio", "decode_speed_ratio_ci95", "x"),
    ("weights ratio", "weights_ratio", None, "x"),
    ("perplexity ratio [95% CI]", "perplexity_ratio", "perplexity_ratio_ci95", "x"),
    ("gates", "gates", None, "text"),
    ("Pareto", "pareto", None, "text"),
    ("notes", "note", None, "text"),
)
_PLACE = {
    "front": "on the front",
    "near front": "≈ front (intervals overlap)",
    "dominated": "dominated",
    "control": "control, not ranked",
    "not plotted": "not plotted",
}


@dataclass(frozen=True)
class Cell:
    field: str
    text: str
    value: str | None = None  # repr of the float; None for text and missing numbers
    ci95: str | None = None  # "lo,hi" as reprs


def _pc(x: float) -> str:
    return f"{100 * x:+.2f}%" if abs(x) < 0.1 else f"{100 * x:+.1f}%"


def _number(x: float | None, ci: tuple[float, float] | None, kind: str) -> str:
    if x is None:
        return "n/a"
    if kind == "pct":
        return _pc(x) + (f" [{_pc(ci[0])}, {_pc(ci[1])}]" if ci else "")
    return f"{x:.3f}x" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _cells(r: Row, place: str, users: str) -> list[Cell]:
    """The row's cells; `users`: for a baseline row, the runs measured against it."""
    out = []
    for _, attr, ci_attr, kind in COLUMNS:
        if attr == "run" and r.kind == "baseline":
            out.append(Cell(attr, users))
        elif attr == "run":
            out.append(Cell(attr, r.run if r.run_id in r.run else f"{r.run} ({r.run_id})"))
        elif attr == "pareto":
            out.append(Cell(attr, _PLACE[place]))
        elif attr == "methods":
            out.append(Cell(attr, " + ".join(r.methods) or "none"))
        elif attr == "variant":
            out.append(Cell(attr, r.variant + (" (control)" if r.kind == "control" else "")))
        elif kind == "text":
            out.append(Cell(attr, str(getattr(r, attr))))
        else:
            x, ci = getattr(r, attr), getattr(r, ci_attr) if ci_attr else None
            text = _number(x, ci, kind) + (" (latency)" if _fallback(r, attr) else "")
            value = None if x is None else repr(float(x))
            out.append(Cell(attr, text, value, f"{ci[0]!r},{ci[1]!r}" if ci else None))
    return out


def _fallback(r: Row, attr: str) -> bool:
    return attr == "cost_saving" and r.saving_basis == "latency"


def context_notes(runs: list[LoadedRun]) -> list[str]:
    """Caveats that do not stop a comparison: different machines, quick runs."""
    notes = []
    env = [r.report.environment for r in runs]
    machines = sorted({(str(e.get("device")), str(e.get("cpu"))) for e in env})
    if len(machines) > 1:
        where = "; ".join(f"{d} ({c})" for d, c in machines)
        notes.append(
            f"The runs were timed on different machines ({where}): each saving is against its "
            "own run's baseline on its own machine, so they compare trade-offs, not prices."
        )
    quick = [r.label for r in runs if r.report.run.get("quick")]
    if quick:
        notes.append(
            f"Quick runs ({', '.join(quick)}): fewer windows and timed repeats, wide intervals."
        )
    return notes


def notes(runs: list[LoadedRun], rows: list[Row]) -> list[str]:
    """What the axes, the front and the markers mean, and what was left out and why."""
    out = [
        f"Quality loss (x, lower is better): relative {QUALITY_METRIC} increase, perplexity "
        "ratio - 1, on the run's own eval windows.",
        "Cost saving (y, higher is better): 1 - the variant's serving cost per decoded token / "
        "its baseline's, from decode throughput timed against that run's own baseline in "
        "interleaved rounds. Positive = cheaper (report.md headlines write it as a cost "
        "change, e.g. a saving of +43.7% reads 'Serving cost per token: -43.7%').",
        "Error bars and [brackets]: 95% intervals. The baseline is the point (0, 0).",
        "The Pareto front uses the point estimates only: a variant is on it when no other "
        "(the baseline included, controls excluded) loses as little quality and saves as much, "
        "one of the two strictly. '≈ front': dominated on the point estimates, but its 95% "
        "intervals overlap a front point's on both axes, so not distinguishable from the front.",
        "Controls (reference points such as a plain cast) are plotted in grey and never ranked.",
    ]
    if any(r.saving_basis == "latency" for r in rows):
        out.append(
            "(latency), hollow markers: no cost summary (no price in the recipe), so the saving "
            "is 1 - the decode latency ratio (ms per token, batch 1), the ratio the cost model "
            "divides the price by: at any fixed price it equals the cost saving."
        )
    out += [f"{r.run}/{r.variant}: {r.note}." for r in rows if not r.plotted]
    return out + context_notes(runs)


def _front_text(rows: list[Row]) -> list[str]:
    near = near_front(rows, pareto_front(rows))
    front = [r.label for r in front_rows(rows)]
    lines = ["Pareto front, lowest loss first: " + ", ".join(front) + "."]
    close = [r.label for r in rows if r.key in near]
    if close:
        lines.append("Not distinguishable from the front (intervals overlap): " + ", ".join(close))
    return lines


def _baseline_users(runs: list[LoadedRun], rows: list[Row]) -> dict[str, str]:
    """For each baseline row's run label: 'all runs', or the runs sharing that baseline."""
    ident = {r.label: baseline_identity(r.report) for r in runs}
    bases = [r.run for r in rows if r.kind == "baseline"]
    if len(bases) == 1:
        return {bases[0]: "all runs"}
    return {b: ", ".join(lab for lab, i in ident.items() if i == ident[b]) for b in bases}


def _runs_table(runs: list[LoadedRun]) -> list[dict[str, str]]:
    return [
        {
            "label": r.label,
            "recipe": r.recipe_name,
            "run_id": r.run_id,
            "started": str(r.report.run.get("started_at", "")),
            "model": str(r.report.baseline.model.get("spec")),
            "variants": str(len(r.report.variants)),
            "exit": str(r.report.exit_code),
            "recipe_sha256": str(r.report.recipe.get("_sha256", "?"))[:12],
            "path": str(r.path),
        }
        for r in runs
    ]


def _context(
    runs: list[LoadedRun],
    rows: list[Row],
    warnings: list[str],
    chosen: tuple[str, str] | None = None,
) -> dict[str, Any]:
    status = pareto_status(rows)
    n = sum(r.kind != "baseline" for r in rows)
    users = _baseline_users(runs, rows)
    return {
        "title": f"compress compare: {len(runs)} run{'s' * (len(runs) != 1)}, {n} variants",
        "headers": [c[0] for c in COLUMNS],
        "rows": [
            {
                "row": r,
                "pareto": status[r.key] == "front",
                "place": status[r.key],
                "cells": _cells(r, status[r.key], users.get(r.run, "")),
            }
            for r in rows
        ],
        "runs": _runs_table(runs),
        "warnings": list(warnings),
        "front": ([f"Chosen: {chosen[0]}: {chosen[1]}."] if chosen else []) + _front_text(rows),
        "notes": notes(runs, rows),
        "colors": {k: v[0] for k, v in STYLES.items()},
    }


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(
    runs: list[LoadedRun], rows: list[Row], warnings: list[str], chosen=None
) -> str:
    """The comparison as Markdown: warnings, the choice of a budgeted search (name, why), the
    front, one table row per row, the runs."""
    ctx = _context(runs, rows, warnings, chosen)
    out = [f"# {ctx['title']}", ""]
    if warnings:
        out += ["**Not comparable, shown anyway (--allow-mismatch):**", ""]
        out += [f"- {w}" for w in warnings] + [""]
    out += ctx["front"] + ["", "The Pareto plot is in the HTML page (`--html`).", ""]
    out += ["| " + " | ".join(ctx["headers"]) + " |", "|" + "---|" * len(ctx["headers"])]
    out += ["| " + " | ".join(_md(c.text) for c in r["cells"]) + " |" for r in ctx["rows"]]
    out += ["", "## Runs", "", "| run | recipe | run id | model | variants | exit | report |"]
    out += ["|---|---|---|---|---|---|---|"]
    out += [
        f"| {_md(r['label'])} | {_md(r['recipe'])} | {r['run_id']} | `{_md(r['model'])}` | "
        f"{r['variants']} | {r['exit']} | `{_md(r['path'])}` |"
        for r in ctx["runs"]
    ]
    out += ["", "## Notes", ""] + [f"- {n}" for n in ctx["notes"]]
    return "\n".join(out) + "\n"


def render_html(runs: list[LoadedRun], rows: list[Row], warnings: list[str], chosen=None) -> str:
    """The comparison as one self-contained HTML page: the Pareto plot as inline SVG and a
    table with the same rows (data-* hooks on each row and number)."""
    ctx = _context(runs, rows, warnings, chosen)
    return render_template("compare.html.j2", svg=_svg(rows), **ctx)


def compare(
    paths: list[Path],
    *,
    html: Path | None,
    md: Path | None,
    allow_mismatch: bool = False,
    chosen: tuple[str, str] | None = None,
) -> tuple[str, list[str]]:
    """Load the runs, check they compare, render and write the pages asked for; returns the
    Markdown text and the mismatch warnings (`compress compare` and a sweep's page)."""
    from compress.report import runs

    loaded = runs.load_runs(paths)
    warnings = runs.check_compatible(loaded, allow_mismatch=allow_mismatch)
    rows = runs.build_rows(loaded)
    md_text = render_markdown(loaded, rows, warnings, chosen)
    html_text = render_html(loaded, rows, warnings, chosen) if html else ""
    write_outputs(html, md, html_text, md_text)
    return md_text, warnings


# -- writing ------------------------------------------------------------------------------
def write_outputs(
    html_path: Path | None, md_path: Path | None, html_text: str, md_text: str
) -> list[Path]:
    """Check every destination first, then write each atomically (whole or absent); returns
    the paths written. A bad destination raises BadInput naming it and nothing is written."""
    targets = [(Path(p), t) for p, t in ((html_path, html_text), (md_path, md_text)) if p]
    if len(targets) == 2 and targets[0][0].resolve() == targets[1][0].resolve():
        raise BadInput(f"--html and --md name the same file '{targets[0][0]}'.")
    check_writable(*(path for path, _ in targets))
    written = []
    for path, text in targets:
        try:
            written.append(atomic_write_text(path, text, overwrite=True))
        except OSError as e:
            raise BadInput(f"Cannot write '{path}': {e.strerror or e}.") from None
        log.info("wrote %s", path)
    return written

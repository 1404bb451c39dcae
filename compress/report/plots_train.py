"""The report page's training figures: the loss curves of every `distill` stage (train loss
per optimizer step, held-out loss where it was evaluated, the kept best step, the learning
rate), and the per-stage numbers the page's "Distillation" section shows beside them."""

from __future__ import annotations

import math
from typing import Any

from compress.report.markdown import fmt
from compress.report.plots import Plot, _draw, _log_axis, _t, series_of
from compress.report.schema import Report

#: the section's table columns: field -> heading
TRAINING_COLUMNS = {
    "steps": "steps",
    "tokens_seen": "tokens seen",
    "train_seconds": "train time (s)",
    "best_step": "best step",
    "best_heldout_loss": "best held-out loss",
    "kld_before": "held-out KLD before",
    "kld_after": "held-out KLD after",
}


def stage_fields(stage: dict[str, Any]) -> dict[str, Any]:
    """A stage's figures wherever the record keeps them: StageRecord.make files every
    method-specific keyword under `details`; a flat dict (written by hand) has them on top."""
    top = {k: v for k, v in stage.items() if k != "details"}
    return {**top, **(stage.get("details") or {})}


def distill_stages(report: Report) -> list[tuple[int, str, int, dict[str, Any]]]:
    """(variant index, variant name, stage number from 1, the stage's fields) of every
    distill stage, in page order."""
    return [
        (i, v.name, k, stage_fields(s))
        for i, v in enumerate(report.variants)
        for k, s in enumerate(v.record.stages, 1)
        if s.get("method") == "distill"
    ]


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _pairs(xs: list | None, ys: list | None) -> list[tuple[Any, float | None]]:
    return [(x, _finite(y)) for x, y in zip(xs or [], ys or [], strict=False)]


def _drawn(curve: dict[str, Any], x: str, y: str) -> list[tuple[Any, float]]:
    """The finite (x, y) points of a curve: a None or non-finite y is not drawn."""
    return [(s, v) for s, v in _pairs(curve.get(x), curve.get(y)) if v is not None]


def _point(series: str, metric: str, value: float | None, n: int | None = None) -> dict:
    """A plotted number in `plots._row`'s shape (a loss has no unit and no interval)."""
    return {
        "series": series,
        "metric": metric,
        "value": value,
        "unit": "",
        "ci95": None,
        "n": n,
        "status": "measured" if value is not None else "non-finite",
    }


def loss_definition(cfg: dict[str, Any]) -> str:
    """The training objective in words, from the stage's config."""
    parts = [
        f"{cfg.get('kl_weight', 1.0)} x T² KL(teacher || student) at T "
        f"{cfg.get('temperature', '?')}"
    ]
    if cfg.get("lm_weight"):
        parts.append(f"{cfg['lm_weight']} x next-token cross-entropy")
    if cfg.get("hidden_weight"):
        parts.append(f"{cfg['hidden_weight']} x normalized hidden-state MSE")
    return " + ".join(parts)


def tokens_per_step(cfg: dict[str, Any]) -> int | None:
    keys = ("batch_size", "seq_len", "grad_accum")
    if not all(isinstance(cfg.get(k), int) for k in keys):
        return None
    return cfg["batch_size"] * cfg["seq_len"] * cfg["grad_accum"]


def _text(field: str, v: Any) -> str:
    """A stage's number as a reader sees it: counts grouped, seconds to 0.1, losses as fmt."""
    value = _finite(v)
    if value is None:
        return "n/a"
    if field in ("steps", "tokens_seen", "best_step", "tokens_per_step"):
        return f"{int(value):,}"
    return f"{value:.1f}" if field == "train_seconds" else fmt(value, "")


def _caption(d: dict[str, Any]) -> str:
    cfg = d.get("config") or {}
    t = {f: _text(f, d.get(f)) for f in TRAINING_COLUMNS}
    shape = " x ".join(str(cfg.get(k, "?")) for k in ("batch_size", "seq_len", "grad_accum"))
    return (
        f"Loss = {loss_definition(cfg)}, per token. Thin line: the training loss of each "
        "optimizer step (mean over its micro-batches); markers: the same loss on the held-out "
        "windows where it was evaluated (non-finite values not drawn); dashed grey: the "
        f"learning rate (right axis). {_text('tokens_per_step', tokens_per_step(cfg))} tokens "
        f"per step ({shape}); {t['steps']} steps, {t['tokens_seen']} tokens seen in "
        f"{t['train_seconds']} s of training. Held-out KL(teacher || student) at T 1: "
        f"{t['kld_before']} -> {t['kld_after']} nats/token. The kept student is the one at the "
        f"best held-out step ({t['best_step']}), marked with a star."
    )


def _rows(name: str, d: dict[str, Any]) -> list[dict[str, Any]]:
    """The numbers a distill figure shows: first and last train loss, every held-out point
    (a non-finite one as null), the best."""
    curve = d.get("curve") or {}
    train = _drawn(curve, "step", "train_loss")
    n = (d.get("data") or {}).get("holdout_sequences") or None
    ends = dict.fromkeys(train[:1] + train[-1:])
    rows = [_point(name, f"train_loss@step{s}", y) for s, y in ends]
    held = _pairs(curve.get("heldout_step"), curve.get("heldout_loss"))
    rows += [_point(name, f"heldout_loss@step{s}", y, n) for s, y in held]
    if d.get("best_step") is not None:
        best = _finite(d.get("best_heldout_loss"))
        rows.append(_point(name, f"best_heldout_loss@step{d['best_step']}", best, n))
    return rows


_HELD = {"ls": "none", "marker": "o", "ms": 4, "mfc": "white", "color": "#24292f"}
_BEST = {"ls": "none", "marker": "*", "ms": 11, "color": "#cf222e", "zorder": 4}
_LR = {"lw": 0.7, "ls": "--", "color": "#8c959f"}


def distill_plot(name: str, colour: str, stage: int, d: dict[str, Any], pid: str) -> Plot:
    """One distill stage's loss curves: train loss per step, held-out loss, the best step,
    the learning rate on a second axis."""
    curve = d.get("curve") or {}
    train = _drawn(curve, "step", "train_loss")
    held = _drawn(curve, "heldout_step", "heldout_loss")
    lr = _drawn(curve, "step", "lr")
    best_step, best = d.get("best_step"), _finite(d.get("best_heldout_loss"))

    def build(plt):
        from matplotlib.ticker import MaxNLocator

        fig, ax = plt.subplots(figsize=(5.6, 3.2))
        one = {"marker": "."} if len(train) == 1 else {}
        if train:
            ax.plot(*zip(*train, strict=True), lw=0.8, color=colour, label="train loss", **one)
        if held:
            ax.plot(*zip(*held, strict=True), label="held-out loss", **_HELD)
        if best_step is not None and best is not None:
            ax.axvline(best_step, color="#8c959f", lw=0.6, ls=":")
            ax.plot([best_step], [best], label=f"best, kept (step {best_step})", **_BEST)
        if not (train or held):
            ax.text(0.5, 0.5, "no finite loss recorded", ha="center", transform=ax.transAxes)
        values = [y for _, y in train + held]
        if values and min(values) > 0 and max(values) / min(values) > 10:
            _log_axis(ax.yaxis, ax.set_yscale, values)  # spans more than a decade
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="optimizer step", ylabel="loss", title=_t(f"{name}: stage {stage}, distill"))
        handles, labels = ax.get_legend_handles_labels()
        if lr:
            ax2 = ax.twinx()
            ax2.spines["right"].set_visible(True)
            ax2.plot(*zip(*lr, strict=True), label="lr", **_LR)
            ax2.set_ylabel("learning rate")
            ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            handles, labels = handles + ax2.lines[:1], labels + ["lr"]
        if handles:
            ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.18, 1.0), frameon=False)
        return fig, _rows(name, d)

    return _draw(pid, f"Distillation loss: {name}, stage {stage}", _caption(d), build)


def distill_plots(report: Report) -> list[Plot]:
    """One figure per distill stage per variant, in page order."""
    colours = [s.colour for s in series_of(report)[1:]]
    return [
        distill_plot(name, colours[i], k, d, f"distill-{i}-{k}")
        for i, name, k, d in distill_stages(report)
    ]


def _cell(field: str, v: Any, num) -> dict[str, Any]:
    text, label = _text(field, v), TRAINING_COLUMNS[field]
    return {"field": field, "label": label, "text": text, "value": num(_finite(v))}


def training_section(report: Report) -> list[dict[str, Any]] | None:
    """The page's "Distillation" section: per distill stage, its numbers and its figure
    (None when no variant has a distill stage)."""
    from compress.report.html import _figure, num

    stages = distill_stages(report)
    if not stages:
        return None
    plots = distill_plots(report)
    return [
        {
            "id": f"training-{i}-{k}",
            "variant": name,
            "stage": k,
            "cells": [_cell(f, d.get(f), num) for f in TRAINING_COLUMNS],
            "plot": _figure(p),
        }
        for (i, name, k, d), p in zip(stages, plots, strict=True)
    ]

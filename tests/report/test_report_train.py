"""report.html's "Distillation" section: each distill stage's loss curves as an inline SVG
figure and its numbers (exact, in data-value) equal to the stage record's; no section
without a distill stage; a held-out loss that is None and a one-point curve still draw."""

from __future__ import annotations

from functools import cache

from test_report_html import Page, _exact, _plots_ok, _self_contained, synthetic

from compress.methods.registry import StageRecord
from compress.report.html import render_html
from compress.report.plots_train import TRAINING_COLUMNS, distill_plots, stage_fields
from compress.report.schema import Report

CONFIG = {
    "method": "distill",
    "temperature": 2.0,
    "kl_weight": 1.0,
    "lm_weight": 0.5,
    "hidden_weight": 0.0,
    "lr": 1e-4,
    "warmup_steps": 2,
    "batch_size": 4,
    "seq_len": 64,
    "grad_accum": 2,
    "steps": 6,
}


def _curve(steps: int, heldout: dict[int, float | None]) -> dict[str, list]:
    return {
        "step": list(range(1, steps + 1)),
        "train_loss": [4.0 / (1 + s) for s in range(1, steps + 1)],
        "lr": [1e-4 * min(1.0, s / 2) for s in range(1, steps + 1)],
        "heldout_step": list(heldout),
        "heldout_loss": list(heldout.values()),
    }


def distill_stage(curve: dict[str, list], best_step: int, best: float, **kw) -> dict:
    """A distill stage as a run stores it: StageRecord.make, dumped as JSON (steps.py)."""
    steps = curve["step"][-1] if curve["step"] else 0
    fields = {
        "curve": curve,
        "steps": steps,
        "tokens_seen": steps * 512,
        "train_seconds": 12.345,
        "budget": {"steps": steps},
        "best_step": best_step,
        "best_heldout_loss": best,
        "kld_before": 0.8125,
        "kld_after": 0.0421,
        "data": {"holdout_sequences": 7},
        **kw,
    }
    record = StageRecord.make(
        method="distill", summary="distill: test", seconds=13.0, config=CONFIG, **fields
    )
    return record.model_dump(mode="json")


def with_stages(report: Report, stages: list[list[dict]]) -> Report:
    """`report` with each variant's stages replaced, in order."""
    variants = [
        v.model_copy(update={"record": v.record.model_copy(update={"stages": s})})
        for v, s in zip(report.variants, stages, strict=True)
    ]
    return report.model_copy(update={"variants": variants})


def _quant() -> dict:
    return StageRecord.make(method="quant", summary="int4", config={"bits": 4}).model_dump(
        mode="json"
    )


def distilled() -> Report:
    """The synthetic report with int4 quantized then distilled (a None held-out loss at
    step 4), and a one-point distill stage on the control."""
    long = distill_stage(_curve(6, {0: 2.5, 2: 1.5, 4: None, 6: 1.1}), 6, 1.1)
    single = distill_stage(_curve(1, {0: 2.0}), 0, 2.0, kld_before=None)
    return with_stages(synthetic(), [[_quant(), long], [single]])


@cache
def _page() -> str:
    return render_html(distilled())


def test_the_record_keeps_distill_figures_under_details():
    stage = distilled().variants[0].record.stages[1]
    assert "curve" in stage["details"] and "curve" not in stage
    assert stage_fields(stage)["best_step"] == 6 and stage_fields(stage)["config"] == CONFIG


def test_a_distill_stage_renders_its_section_figure_and_numbers():
    page = _page()
    _self_contained(page)
    doc = Page(page)
    assert '<section id="training">' in page and '<a href="#training">Distillation</a>' in page
    _plots_ok(doc, {"distill-0-2", "distill-1-1"})
    report = distilled()
    for v, k in ((report.variants[0], 2), (report.variants[1], 1)):
        (row,) = doc.of("distill", variant=v.name, stage=str(k))
        details = v.record.stages[k - 1]["details"]
        assert set(row["cells"]) == set(TRAINING_COLUMNS)
        for field in TRAINING_COLUMNS:
            _exact(row["cells"][field], details[field])
    assert "1.0 x T² KL(teacher || student) at T 2.0 + 0.5 x next-token cross-entropy" in page
    assert "512 tokens per step (4 x 64 x 2); 6 steps, 3,072 tokens seen in 12.3 s" in page
    assert "0.8125 -&gt; 0.0421 nats/token" in page
    assert "best held-out step (6)" in page


def test_the_figure_rows_hold_the_heldout_points_and_the_best():
    doc = Page(_page())
    rows = {r["attrs"]["data-metric"]: r for r in doc.of("plotted", model="int4")}
    for step, loss in ((0, 2.5), (2, 1.5), (4, None), (6, 1.1)):
        _exact(rows[f"heldout_loss@step{step}"]["cells"]["value"], loss)
    _exact(rows["best_heldout_loss@step6"]["cells"]["value"], 1.1)
    _exact(rows["train_loss@step1"]["cells"]["value"], 2.0)
    _exact(rows["train_loss@step6"]["cells"]["value"], 4.0 / 7)


def test_a_none_heldout_loss_and_a_one_point_curve_still_draw():
    plots = {p.id: p for p in distill_plots(distilled())}
    assert set(plots) == {"distill-0-2", "distill-1-1"}
    for p in plots.values():
        assert p.svg.startswith('<svg role="img"') and "<path" in p.svg
    one = Page(_page()).of("distill", variant="bf16", stage="1")[0]["cells"]
    _exact(one["kld_before"], None)
    assert "n/a -&gt; 0.0421 nats/token" in _page()


def test_a_flat_stage_dict_is_read_too():
    flat = distill_stage(_curve(2, {0: 3.0, 2: 2.0}), 2, 2.0)
    flat.update(flat.pop("details"))
    page = render_html(with_stages(synthetic(), [[flat], []]))
    (row,) = Page(page).of("distill", variant="int4", stage="1")
    _exact(row["cells"]["best_heldout_loss"], 2.0)


def test_no_distill_stage_no_section():
    page = render_html(with_stages(synthetic(), [[_quant()], []]))
    assert 'id="training"' not in page and "#training" not in page
    assert not any(p.startswith("distill-") for p in Page(page).figures)


def test_rendering_with_distill_is_deterministic():
    assert render_html(distilled()) == _page()

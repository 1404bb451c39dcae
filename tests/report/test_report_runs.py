"""compress compare's library side: loading and checking many runs, the rows, the Pareto front,
the pages and writing them (all or nothing), on the committed example runs and broken copies."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from compress.errors import BadInput
from compress.report.compare_page import render_html, render_markdown, write_outputs
from compress.report.pareto import near_front, pareto_front, pareto_status
from compress.report.runs import Row, build_rows, check_compatible, load_runs

EXAMPLES = Path(__file__).resolve().parents[2] / "reports" / "examples"
INT4 = EXAMPLES / "smollm2-int4" / "20261130T211733Z"
INT8 = EXAMPLES / "smollm2-int8" / "20261130T212152Z"
MULTI = EXAMPLES / "smollm2-compare" / "20261201T022627Z"
ALL = [INT4, INT8, MULTI]
LATENCY = "decode.latency_ms_per_token"


def _copy(tmp_path: Path, src: Path, name: str, edit=None) -> Path:
    """The run `src` copied to tmp_path/name, its report.json changed by `edit(data)`."""
    dst = tmp_path / name
    shutil.copytree(src, dst)
    if edit is not None:
        data = json.loads((dst / "report.json").read_text())
        edit(data)
        (dst / "report.json").write_text(json.dumps(data))
    return dst


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name / "report.json"
    path.parent.mkdir()
    path.write_text(text)
    return path.parent


@pytest.fixture(scope="module")
def examples():
    runs = load_runs(ALL)
    return runs, build_rows(runs)


# -- the example runs ---------------------------------------------------------------------
def test_compare_examples_rows_and_front(examples):
    runs, rows = examples
    assert [r.label for r in runs] == ["smollm2-int4", "smollm2-int8", "smollm2-compare"]
    assert check_compatible(runs) == []  # same model and eval windows; calibration ignored
    assert len(rows) == sum(len(r.report.variants) for r in runs) + 1 == 7
    assert [r.kind for r in rows].count("baseline") == 1
    by = {r.key: r for r in rows}
    int4 = by[("smollm2-compare", "int4")]
    cost = runs[2].report.variant("int4").cost
    assert int4.cost_saving == cost.cost_saving_fraction > 0  # positive = cheaper
    assert int4.quality_loss == cost.quality_loss_fraction
    assert int4.methods == ("rtn", "rtn") and int4.saving_basis == "cost"
    assert by[("smollm2-compare", "bf16")].kind == "control"
    front = pareto_front(rows)
    assert front == {
        ("smollm2-int4", "baseline"),
        ("smollm2-compare", "int4"),
        ("smollm2-compare", "gptq"),
    }
    # same loss, lower saving than the multi-variant run's int4, but the intervals overlap
    assert near_front(rows, front) == {("smollm2-int4", "compressed")}
    assert pareto_status(rows)[("smollm2-compare", "bf16")] == "control"


# -- the front on hand-made rows ----------------------------------------------------------
def _row(name: str, loss, saving, kind="variant", loss_ci=None, saving_ci=None) -> Row:
    return Row(
        run="r",
        run_id="1",
        recipe="r",
        variant=name,
        kind=kind,
        status="PASS",
        saving_basis="baseline" if kind == "baseline" else "cost",
        quality_loss=loss,
        cost_saving=saving,
        quality_loss_ci95=loss_ci,
        cost_saving_ci95=saving_ci,
    )


def test_pareto_front_ties_dominance_controls_and_baseline():
    rows = [
        _row("baseline", 0.0, 0.0, kind="baseline"),
        _row("a", 0.01, 0.40),
        _row("a_twin", 0.01, 0.40),  # a tie: both on the front
        _row("same_loss_less_saving", 0.01, 0.30),
        _row("same_saving_more_loss", 0.02, 0.40),
        _row("b", 0.05, 0.50),
        _row("worse_than_baseline", 0.01, -0.05),  # the baseline dominates it
        _row("ctl", -0.01, 0.90, kind="control"),  # would dominate a and b: never ranked
        _row("no_cost", 0.001, None),  # not plotted, never on the front
    ]
    front = pareto_front(rows)
    assert front == {("r", "baseline"), ("r", "a"), ("r", "a_twin"), ("r", "b")}
    status = pareto_status(rows)
    assert status[("r", "ctl")] == "control"
    assert status[("r", "no_cost")] == "not plotted"
    assert status[("r", "worse_than_baseline")] == "dominated"


def test_baseline_can_be_dominated_and_intervals_decide_near_front():
    rows = [
        _row("baseline", 0.0, 0.0, kind="baseline"),
        _row("free", -0.001, 0.2, loss_ci=(-0.003, 0.001), saving_ci=(0.1, 0.3)),
        _row("close", 0.002, 0.15, loss_ci=(0.0, 0.004), saving_ci=(0.05, 0.25)),
        _row("far", 0.01, 0.05, loss_ci=(0.008, 0.012), saving_ci=(0.0, 0.09)),
    ]
    front = pareto_front(rows)
    assert front == {("r", "free")}  # better on both axes than not compressing
    assert near_front(rows, front) == {("r", "close")}
    assert pareto_status(rows)[("r", "far")] == "dominated"


def test_latency_fallback_and_unplottable_variant(tmp_path):
    def edit(d):
        d["variants"][0]["cost"] = None  # int8: no price -> 1 - decode latency ratio
        d["variants"][1]["cost"] = None  # int4: no price and no latency -> not plotted
        d["variants"][1]["comparisons"] = [
            c
            for c in d["variants"][1]["comparisons"]
            if c["metric"] != "decode.latency_ms_per_token"
        ]

    runs = load_runs([_copy(tmp_path, MULTI, "m", edit)])
    rows = {r.variant: r for r in build_rows(runs)}
    lat = runs[0].report.variant("int8").comparison(LATENCY)
    assert rows["int8"].saving_basis == "latency"
    assert rows["int8"].cost_saving == pytest.approx(1 - lat.ratio)
    assert rows["int8"].cost_saving_ci95 == pytest.approx(
        (1 - lat.ratio_ci95[1], 1 - lat.ratio_ci95[0])
    )
    assert rows["int8"].quality_loss == pytest.approx(
        runs[0].report.variant("int8").comparison("wikitext2.perplexity").ratio - 1
    )
    assert not rows["int4"].plotted and "not plotted" in rows["int4"].note
    md = render_markdown(runs, list(rows.values()), [])
    assert "(latency)" in md and "decode latency ratio" in md and "not plotted" in md
    assert ("smollm2-compare", "int4") not in pareto_front(list(rows.values()))


# -- bad runs -----------------------------------------------------------------------------
def test_truncated_report_is_refused_naming_the_file(tmp_path):
    text = (INT8 / "report.json").read_text()
    run = _write(tmp_path, "cut", text[: len(text) // 2])
    with pytest.raises(BadInput, match="truncated or corrupt") as e:
        load_runs([INT4, run])
    assert str(run / "report.json") in str(e.value) and e.value.exit_code == 2


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"schema_version": 99}, "newer than this tool reads"),
        ({"schema_version": 0}, "older than any"),
        ({"schema_version": "3"}, "expected an integer"),
        ({"schema_version": 2, "run": {}, "recipe": {}, "baseline": {}}, "migrating it"),
        ([1, 2, 3], "not a compress report"),
        ({"hello": "world"}, "not a compress report"),
    ],
)
def test_reports_of_other_versions_or_shapes_are_refused(tmp_path, data, match):
    run = _write(tmp_path, "bad", json.dumps(data))
    with pytest.raises(BadInput, match=match) as e:
        load_runs([run])
    assert str(run / "report.json") in str(e.value)


def test_wrong_shape_and_failed_runs_are_refused(tmp_path):
    shape = _copy(tmp_path, MULTI, "shape", lambda d: d.update(variants="x"))
    with pytest.raises(BadInput, match="does not match the report schema"):
        load_runs([shape])
    failed = _copy(tmp_path, MULTI, "failed", lambda d: d["run"].update(status="failed"))
    with pytest.raises(BadInput, match="failed"):
        load_runs([failed])
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / "failure.json").write_text("{}")
    with pytest.raises(BadInput, match="failure.json"):
        load_runs([crashed])


def test_missing_empty_and_repeated_inputs_are_refused(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        load_runs([tmp_path / "nope"])
    with pytest.raises(BadInput, match="No report.json"):
        load_runs([tmp_path])
    with pytest.raises(BadInput, match="Nothing to compare"):
        load_runs([])
    with pytest.raises(BadInput, match="given twice"):
        load_runs([INT4, INT4 / "report.json"])


# -- compatibility ------------------------------------------------------------------------
def test_different_baselines_are_refused_naming_both(tmp_path):
    other = _copy(
        tmp_path, INT8, "gemma", lambda d: d["baseline"]["model"].update(spec="gemma3-270m")
    )
    runs = load_runs([INT4, other])
    with pytest.raises(BadInput) as e:
        check_compatible(runs)
    msg = str(e.value)
    assert "'gemma3-270m'" in msg and "'smollm2-135m'" in msg
    assert "run smollm2-int8's baseline model spec" in msg and "run smollm2-int4's" in msg
    assert "--allow-mismatch" in msg


def test_different_eval_data_is_refused_and_allowed_on_request(tmp_path):
    def edit(d):
        d["data"][0]["token_ids_sha256"] = "ab" * 32

    other = _copy(tmp_path, INT8, "tok", edit)
    runs = load_runs([INT4, other])
    with pytest.raises(BadInput, match="eval data 'wikitext2' token_ids_sha256 differ"):
        check_compatible(runs)
    warnings = check_compatible(runs, allow_mismatch=True)
    assert len(warnings) == 1 and "abababababab…" in warnings[0]
    html = render_html(runs, build_rows(runs), warnings)
    assert 'data-warnings="1"' in html and "abababababab…" in html
    assert "abababababab…" in render_markdown(runs, build_rows(runs), warnings)


def test_mismatched_baselines_get_a_baseline_row_each(tmp_path):
    other = _copy(tmp_path, INT8, "g", lambda d: d["baseline"]["model"].update(sha256="0" * 64))
    runs = load_runs([INT4, other])
    assert check_compatible(runs, allow_mismatch=True)
    rows = build_rows(runs)
    assert [r.key for r in rows if r.kind == "baseline"] == [
        ("smollm2-int4", "baseline"),
        ("smollm2-int8", "baseline"),
    ]
    render_html(runs, rows, [])  # both baselines at (0, 0): one star, one label


def test_the_same_run_twice_modified_gets_unique_labels(tmp_path):
    copy = _copy(tmp_path, INT4, "again", lambda d: d["run"].update(wall_s=1.0))
    runs = load_runs([INT4, copy])
    assert [r.label for r in runs] == [
        "smollm2-int4@20261130T211733Z",
        "smollm2-int4@20261130T211733Z#2",
    ]


# -- pages --------------------------------------------------------------------------------
class _Hooks(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "tr" and "data-variant" in a:
            self.rows.append(dict(a, cells={}))
        elif tag == "td" and "data-field" in a and self.rows:
            self.rows[-1]["cells"][a["data-field"]] = a


def test_html_is_self_contained_with_the_plot_and_hooks(examples):
    runs, rows = examples
    html = render_html(runs, rows, [])
    assert "<script" not in html and "<link" not in html and "<img" not in html
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    assert re.search(r'<figure class="plot" data-plot="pareto">\s*<svg', html)
    p = _Hooks()
    p.feed(html)
    assert ("body", {"data-runs": "3"}) in p.tags
    assert len(p.rows) == len(rows)
    for row, tr in zip(rows, p.rows, strict=True):
        assert (tr["data-run"], tr["data-variant"]) == (row.run_id, row.variant)
        assert tr["data-pareto"] == ("true" if row.key in pareto_front(rows) else "false")
        for field in ("cost_saving", "quality_loss"):
            assert float(tr["cells"][field]["data-value"]) == getattr(row, field)
            assert tr["cells"][field]["data-value"] == repr(getattr(row, field))
    for label in ("smollm2-compare/gptq", "smollm2-int4/compressed", "baseline"):
        assert f">{label}</text>" in html  # every point labelled in the SVG


def test_markdown_has_every_row_and_the_front(examples):
    runs, rows = examples
    md = render_markdown(runs, rows, [])
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and "%" in ln]
    table = [ln for ln in table if not ln.startswith("| run | variant")]
    assert len(table) == len(rows)
    assert "Pareto front, lowest loss first: baseline, smollm2-compare/int4, " in md
    assert "+47.2% [+43.4%, +50.6%]" in md  # the multi-variant run's int4 saving
    assert "point estimates" in md


def test_rendering_is_deterministic(examples):
    runs, rows = examples
    assert render_html(runs, rows, []) == render_html(runs, rows, [])
    assert render_markdown(runs, rows, []) == render_markdown(runs, rows, [])


# -- writing ------------------------------------------------------------------------------
def test_write_outputs_checks_both_before_writing_either(tmp_path):
    html, md = tmp_path / "c.html", tmp_path / "c.md"
    with pytest.raises(BadInput, match="does not exist") as e:
        write_outputs(html, tmp_path / "no" / "c.md", "<html>", "# md")
    assert str(tmp_path / "no" / "c.md") in str(e.value)
    assert not html.exists()
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(BadInput, match="is a folder"):
        write_outputs(folder, md, "<html>", "# md")
    assert not md.exists()
    with pytest.raises(BadInput, match="same file"):
        write_outputs(html, html, "<html>", "# md")
    assert write_outputs(html, md, "<html>", "# md") == [html, md]
    assert html.read_text() == "<html>" and md.read_text() == "# md"
    assert write_outputs(None, md, "", "# again") == [md] and md.read_text() == "# again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.html", "c.md", "folder"]

"""`variants:` end to end on the tiny model: one baseline loaded and scored once, every variant
paired with it, one report (schema 3) with a column per variant; old reports still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import run, tiny_recipe, write  # tests/ is on sys.path (rootdir conftest)

DATA = Path(__file__).resolve().parent / "data" / "reports"


@pytest.fixture(scope="module")
def variants_run(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    from compress import models

    calls = []
    real_load = models.load

    def counting_load(spec, *a, **kw):
        calls.append(str(getattr(spec, "spec", spec)))
        return real_load(spec, *a, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(models, "load", counting_load)
    root = tmp_path_factory.mktemp("variants")
    recipe = tiny_recipe(
        tiny_model_dir,
        name="tiny-variants",
        stages=None,
        variants=[
            {
                "name": "int4",
                "stages": [{"method": "rtn", "bits": 4, "group_size": 32}],
                "gates": [{"metric": "kld.mean", "max_value": 1e6}],
            },
            {"name": "int8", "stages": [{"method": "rtn", "bits": 8}]},
            {"name": "bf16", "control": True, "stages": [{"method": "cast", "dtype": "bfloat16"}]},
        ],
        gates=[{"metric": "weights.bytes", "max_ratio": 0.5}],
    )
    del recipe["stages"]
    recipe["export"] = ["compressed-tensors"]
    out = root / "reports"
    args = ("--out", out, "--quick", "--data-dir", tiny_data_dir, "--no-progress")
    try:
        res = run("apply", write(root / "v.yaml", recipe), *args)
    finally:
        mp.undo()
    run_dir = next((out / "tiny-variants").iterdir())
    return {"res": res, "run": run_dir, "loads": calls, "root": root}


def test_one_baseline_every_variant_paired_one_report(variants_run):
    import jsonschema

    from compress.report.schema import report_json_schema

    res, run_dir = variants_run["res"], variants_run["run"]
    assert res.exit_code == 0, res.output
    assert len(variants_run["loads"]) == 1  # the baseline, loaded once in this process
    data = json.loads((run_dir / "report.json").read_text())
    jsonschema.validate(data, report_json_schema())
    assert data["schema_version"] == 3
    names = [v["name"] for v in data["variants"]]
    assert names == ["int4", "int8", "bf16"]
    windows = data["data"][0]["windows"]
    protocol = data["baseline"]["context"]["timing_protocol"]
    for rnd in protocol["order"]:  # every model timed once per round, in the same rounds
        assert sorted(rnd) == sorted(["baseline", *names])
    base_bytes = next(m for m in data["baseline"]["measurements"] if m["name"] == "weights.bytes")
    for v in data["variants"]:
        assert (run_dir / "models" / v["name"] / "compress_quant.json").is_file()
        assert v["record"]["model"]["spec"] == str(run_dir / "models" / v["name"])
        by = {c["metric"]: c for c in v["comparisons"]}
        assert by["wikitext2.perplexity"]["paired"] and by["wikitext2.perplexity"]["n"] == windows
        assert by["decode.tokens_per_s"]["paired"]
        assert by["decode.tokens_per_s"]["n"] == protocol["rounds"]
        assert by["weights.bytes"]["baseline"] == base_bytes["value"]  # the same baseline
    int4, int8, bf16 = data["variants"]
    assert [g["metric"] for g in int4["gates"]] == ["weights.bytes", "kld.mean"]
    assert [g["metric"] for g in int8["gates"]] == ["weights.bytes"]
    assert bf16["control"] and bf16["gates"] == [] and bf16["exit_code"] == 0
    assert not (run_dir / "model").exists()


def test_markdown_has_one_table_with_a_column_per_variant(variants_run):
    md = (variants_run["run"] / "report.md").read_text()
    head = "| metric | unit | better | baseline | int4 | int8 | bf16 (control) |"
    assert head in md
    assert md.index(head) < md.index("## Variant `int4`") < md.index("## Variant `bf16`")
    res = run("report", variants_run["run"])
    assert res.exit_code == 0 and head in res.output


def test_gate_rechecks_every_gated_variant_and_exits_with_the_worst(variants_run, tmp_path):
    res = run("gate", variants_run["run"])
    assert res.exit_code == 0, res.output
    assert "gates: int4" in res.output and "gates: int8" in res.output
    strict = write(tmp_path / "g.yaml", [{"metric": "weights.bytes", "max_ratio": 0.01}])
    res = run("gate", variants_run["run"], "--gates", strict)
    assert res.exit_code == 1, res.output
    assert "gates: bf16" in res.output and "none, exit 0" in res.output  # control: not gated


@pytest.mark.parametrize("version", [1, 2])
def test_older_reports_are_read_as_one_variant(version, tmp_path):
    src = DATA / f"v{version}_smollm2_int4.json"
    old = json.loads(src.read_text())
    assert old["schema_version"] == version and "compressed" in old
    res = run("report", src)
    assert res.exit_code == 0, res.output
    assert f"Read from a schema v{version} report.json" in res.output
    assert "| wikitext2.perplexity |" in res.output
    res = run("gate", src)
    assert res.exit_code == old["exit_code"], res.output


def test_a_report_newer_than_the_tool_is_refused(tmp_path):
    data = json.loads((DATA / "v2_smollm2_int4.json").read_text())
    data["schema_version"] = 99
    res = run("report", write(tmp_path / "r.json", json.dumps(data)))
    assert res.exit_code == 2 and "newer than this tool reads" in res.output


def test_recipe_exports_are_written_or_noted_per_variant(variants_run):
    """`export:` writes each variant a format can hold; the others say why in their notes."""
    run_dir = variants_run["run"]
    assert (run_dir / "exports" / "int4-ct" / "config.json").is_file()
    assert (run_dir / "exports" / "int8-ct" / "model.safetensors").is_file()
    assert not (run_dir / "exports" / "bf16-ct").exists()
    report = json.loads((run_dir / "report.json").read_text())
    notes = {v["name"]: " ".join(v["notes"]) for v in report["variants"]}
    assert "exported as compressed-tensors" in notes["int4"]
    assert "not exported as compressed-tensors" in notes["bf16"] and "int4/int8" in notes["bf16"]

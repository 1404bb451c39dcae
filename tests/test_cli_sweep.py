"""`compress sweep`: the points of a space (--dry-run), bad spaces (exit 2), and a tiny sweep
run end to end as one report with a variant per valid point."""

from __future__ import annotations

import json

import pytest
from test_cli import run, tiny_recipe, write  # tests/ is on sys.path (rootdir conftest)


@pytest.fixture
def base(tmp_path, tiny_model_dir):
    return write(tmp_path / "base.yaml", tiny_recipe(tiny_model_dir, name="tiny-base"))


def _sweep(tmp_path, space, **extra):
    return write(
        tmp_path / "s.yaml", {"name": "tiny-sweep", "recipe": "base.yaml", "space": space, **extra}
    )


def test_dry_run_lists_points_and_skipped_ones(tmp_path, base):
    s = _sweep(tmp_path, {"stages.0.bits": [4, 8]})
    res = run("sweep", s, "--dry-run")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "1 of 2 point(s) run" in text and "bits_8" in text and "skipped" in text


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"stages.0.bitz": [4]}, "did you mean 'bits'"),
        ({"stages.0.bits": []}, "has no values"),
        ({}, "space"),
    ],
)
def test_bad_spaces_are_exit_2(tmp_path, base, space, message):
    res = run("sweep", _sweep(tmp_path, space), "--dry-run")
    assert res.exit_code == 2 and message in " ".join(res.output.split())


def test_a_missing_sweep_file_and_an_unknown_executor_are_exit_2(tmp_path, base):
    assert run("sweep", tmp_path / "nope.yaml").exit_code == 2
    s = _sweep(tmp_path, {"stages.0.bits": [4]})
    res = run("sweep", s, "--executor", "dask")
    assert res.exit_code == 2 and "local" in res.output


def test_a_tiny_sweep_runs_as_one_report(tmp_path, tiny_model_dir, tiny_data_dir):
    # untimed: how the points become variants of one report is the subject (one baseline
    # timed against several variants: tests/test_cli_variants.py)
    untimed = tiny_recipe(tiny_model_dir, name="tiny-base", profile={"enabled": False})
    write(tmp_path / "base.yaml", untimed)
    s = _sweep(tmp_path, {"stages.0.group_size": [32, 64]})
    out = tmp_path / "reports"
    res = run(
        "sweep", s, "--out", out, "--quick", "--data-dir", tiny_data_dir, "--no-progress",
        "--executor", "one-run",
    )  # fmt: skip
    assert res.exit_code == 0, res.output  # the only gate is on weights bytes
    (report_path,) = (out / "tiny-sweep").glob("*/report.json")
    report = json.loads(report_path.read_text())
    names = [v["name"] for v in report["variants"]]
    assert names == ["group_size_32", "group_size_64"]
    assert all("trial" in v["description"] for v in report["variants"])

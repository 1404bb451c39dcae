"""Sweeps run trial by trial: each trial a standalone one-variant run in the stable sweep
folder; re-runs skip finished trials; a failing trial is recorded and the others go on; the
Ray executor runs the same trials with the same numbers; bad clusters and resources: exit 2."""

from __future__ import annotations

import json

import pytest
from test_cli import run, tiny_recipe, write  # tests/ is on sys.path (rootdir conftest)


@pytest.fixture
def base(tmp_path, tiny_model_dir):
    profile = {"enabled": False, "kernels": "fixed"}  # bit-reproducible quality numbers
    recipe = tiny_recipe(tiny_model_dir, name="tiny-base", profile=profile)
    return write(tmp_path / "base.yaml", recipe)


def _sweep(tmp_path, space):
    return write(tmp_path / "s.yaml", {"name": "tiny-sweep", "recipe": "base.yaml", "space": space})


def _run(sweep, out, data, *extra):
    return run("sweep", sweep, "--out", out, "--quick", "--data-dir", data, "--no-progress", *extra)


def _trials(out) -> dict[str, dict]:
    data = json.loads((out / "tiny-sweep" / "sweep.json").read_text())
    return {t["name"]: t for t in data["trials"]}


def _ppl(out, trial) -> float:
    rep = json.loads((out / "tiny-sweep" / trial["run_dir"] / "report.json").read_text())
    (m,) = [m for m in rep["variants"][0]["record"]["measurements"] if m["name"] == "kld.mean"]
    return rep["variants"][0]["comparisons"][1]["compressed"], m["value"]


def test_local_trials_resume_and_failures(tmp_path, base, tiny_data_dir):
    out = tmp_path / "out"
    s = _sweep(tmp_path, {"stages.0.group_size": [32, 64]})
    res = _run(s, out, tiny_data_dir, "--executor", "local")
    assert res.exit_code == 0, res.output
    trials = _trials(out)
    assert {t["status"] for t in trials.values()} == {"done"}
    for t in trials.values():  # each trial: its own standalone run of one variant
        rep = json.loads((out / "tiny-sweep" / t["run_dir"] / "report.json").read_text())
        assert [v["name"] for v in rep["variants"]] == [t["name"]]
        assert t["headline"]["weights.bytes"]["ratio"] < 0.5
    assert (out / "tiny-sweep" / "compare.md").is_file()
    before = {n: (out / "tiny-sweep" / "trials" / n / "trial.json").read_text() for n in trials}

    # the same sweep again: nothing runs, nothing is rewritten
    res = _run(s, out, tiny_data_dir, "--executor", "local")
    assert res.exit_code == 0, res.output
    assert res.output.count("(earlier)") == 2, res.output
    for n, text in before.items():
        assert (out / "tiny-sweep" / "trials" / n / "trial.json").read_text() == text

    # a wider space: only the new points run; one of them fails and is recorded
    s = _sweep(tmp_path, {"stages.0.group_size": [32, 64, 128, None]})
    res = _run(s, out, tiny_data_dir, "--executor", "local")
    trials = _trials(out)
    assert trials["group_size_128"]["status"] == "failed", trials["group_size_128"]
    assert "group" in trials["group_size_128"]["error"]
    assert trials["group_size_None"]["status"] == "done"  # ran after the failure
    assert res.exit_code == trials["group_size_128"]["exit_code"] != 0
    for n, text in before.items():
        assert (out / "tiny-sweep" / "trials" / n / "trial.json").read_text() == text


def test_ray_runs_the_same_trials_with_the_same_numbers(tmp_path, base, tiny_data_dir):
    pytest.importorskip("ray.tune", reason="Ray Tune is an optional extra: compress[sweep]")
    s = _sweep(tmp_path, {"stages.0.group_size": [32, 64]})
    local, ray = tmp_path / "local", tmp_path / "ray"
    assert _run(s, local, tiny_data_dir, "--executor", "local").exit_code == 0
    res = _run(s, ray, tiny_data_dir, "--executor", "ray")  # a whole node per trial
    assert res.exit_code == 0, res.output
    a, b = _trials(local), _trials(ray)
    assert set(a) == set(b) == {"group_size_32", "group_size_64"}
    for name in a:
        assert b[name]["status"] == "done"
        assert _ppl(ray, b[name]) == _ppl(local, a[name])  # bit-identical quality numbers
    res = _run(s, ray, tiny_data_dir, "--executor", "ray")
    assert res.exit_code == 0 and res.output.count("(earlier)") == 2, res.output


def test_bad_cluster_and_impossible_resources_are_exit_2(tmp_path, base, tiny_data_dir):
    pytest.importorskip("ray.tune", reason="Ray Tune is an optional extra: compress[sweep]")
    s = _sweep(tmp_path, {"stages.0.group_size": [32]})
    out = tmp_path / "out"
    res = _run(s, out, tiny_data_dir, "--address", "127.0.0.1:9")  # discard port: refused
    assert res.exit_code == 2 and "cannot reach the Ray cluster" in " ".join(res.output.split())
    res = _run(s, out, tiny_data_dir, "--cpus-per-trial", "4096")
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "no trial could ever start" in text, res.output
    assert not (out / "tiny-sweep").exists()  # nothing half-written


def test_bad_memory_and_executor_are_exit_2(tmp_path, base, tiny_data_dir):
    s = _sweep(tmp_path, {"stages.0.group_size": [32]})
    res = _run(s, tmp_path / "o", tiny_data_dir, "--executor", "local", "--memory-per-trial", "x")
    assert res.exit_code == 2 and "memory" in res.output
    res = _run(s, tmp_path / "o", tiny_data_dir, "--executor", "dask")
    assert res.exit_code == 2 and "one-run" in res.output

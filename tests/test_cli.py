"""The CLI end to end on a tiny model: exit codes, reports, bad input, nothing overwritten."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from compress.cli import app

runner = CliRunner()


def tiny_recipe(model_dir: Path, **over) -> dict:
    r = {
        "name": "tiny-int4",
        "model": str(model_dir),
        "stages": [
            {"method": "rtn", "bits": 4, "group_size": 32, "symmetric": False},
            {"method": "rtn", "bits": 8, "targets": ["lm_head"], "ignore": []},
        ],
        "eval": {"wikitext2": {"seq_len": 64, "max_windows": 6, "quick_windows": 3}},
        "profile": {
            "prompt_tokens": 16,
            "new_tokens": 4,
            "repeats": 2,
            "quick_repeats": 2,
            "quick_pairs": 2,  # 4 fresh processes, not 8: each imports torch (~5 s on 2 cores)
            "warmup": 0,
        },
        "gates": [{"metric": "weights.bytes", "max_ratio": 0.5}],
    }
    r.update(over)
    return r


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    """One real apply on the tiny model, shared by the tests below (takes ~20 s)."""
    root = tmp_path_factory.mktemp("cli")
    recipe = write(root / "tiny.yaml", tiny_recipe(tiny_model_dir))
    out = root / "reports"
    res = run(
        "apply", recipe, "--out", out, "--quick", "--data-dir", tiny_data_dir, "--no-progress"
    )
    runs = sorted((out / "tiny-int4").iterdir())
    return {"res": res, "root": root, "out": out, "run": runs[-1], "recipe": recipe}


def test_apply_writes_a_valid_report_and_passes_its_gate(good_run):
    import jsonschema

    from compress.report.schema import report_json_schema

    assert good_run["res"].exit_code == 0, good_run["res"].output
    run_dir = good_run["run"]
    data = json.loads((run_dir / "report.json").read_text())
    jsonschema.validate(data, report_json_schema())
    assert data["schema_version"] == 3 and len(data["variants"]) == 1
    v = data["variants"][0]
    assert v["name"] == "compressed" and v["record"]["label"] == "compressed"
    assert data["exit_code"] == 0 and v["gates"][0]["status"] == "pass"
    names = {m["name"] for m in v["record"]["measurements"]}
    assert {
        "wikitext2.perplexity",
        "kld.mean",
        "decode.tokens_per_s",
        "weights.bytes",
        "memory.peak_rss_bytes",
        "energy.joules_per_token",
    } <= names
    by = {m["name"]: m for m in v["record"]["measurements"]}
    energy = by["energy.joules_per_token"]
    assert energy["status"] in ("measured", "estimated", "unavailable")
    if energy["status"] == "unavailable":
        assert energy["value"] is None and energy["reason"]
    for m in v["record"]["measurements"]:
        assert m["unit"] and isinstance(m["higher_is_better"], bool)
    assert data["data"][0]["token_ids_sha256"] and data["recipe"]["_sha256"]
    assert data["environment"]["versions"]["torch"]
    md = (run_dir / "report.md").read_text()
    assert "| wikitext2.perplexity |" in md and "PASS" in md
    assert (run_dir / "model" / "compress_quant.json").is_file()


def test_saved_model_reloads_as_a_model_spec(good_run):
    from compress import models

    handle = models.load(str(good_run["run"] / "model"))
    assert handle.source.kind == "compressed"
    assert any(getattr(m, "kind", None) == "int4_linear" for m in handle.model.modules())


def test_second_run_never_overwrites(good_run, tiny_model_dir, tiny_data_dir):
    first = (good_run["run"] / "report.json").read_bytes()
    # the same recipe name into the same folder; untimed (the folders are the subject here)
    untimed = tiny_recipe(tiny_model_dir, profile={"enabled": False})
    res = run(
        "apply",
        write(good_run["root"] / "tiny-untimed.yaml", untimed),
        "--out",
        good_run["out"],
        "--quick",
        "--data-dir",
        tiny_data_dir,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    runs = sorted((good_run["out"] / "tiny-int4").iterdir())
    assert len(runs) >= 2
    assert (good_run["run"] / "report.json").read_bytes() == first


def test_report_rerenders_from_json(good_run):
    res = run("report", good_run["run"])
    assert res.exit_code == 0
    assert (
        res.output.strip().splitlines()[0]
        == ((good_run["run"] / "report.md").read_text().strip().splitlines()[0])
    )


@pytest.mark.parametrize(
    ("gates", "code"),
    [
        ([{"metric": "weights.bytes", "max_ratio": 0.9}], 0),
        ([{"metric": "weights.bytes", "max_ratio": 0.01}], 1),
        ([{"metric": "energy.joules_per_token", "max_ratio": 0.9}], 3),
        (
            [
                {"metric": "weights.bytes", "max_ratio": 0.9},
                {"metric": "weights.bytes", "max_ratio": 0.01},
            ],
            1,
        ),
    ],
)
def test_gate_rechecks_saved_report(good_run, tmp_path, gates, code):
    res = run(
        "gate",
        good_run["run"] / "report.json",
        "--gates",
        write(tmp_path / "g.yaml", {"gates": gates}),
    )
    assert res.exit_code == code, res.output


def test_gate_inconclusive_when_interval_straddles(good_run, tmp_path):
    data = json.loads((good_run["run"] / "report.json").read_text())
    c = next(c for c in data["variants"][0]["comparisons"] if c["metric"] == "decode.tokens_per_s")
    lo, hi = c["ratio_ci95"]
    res = run(
        "gate",
        good_run["run"],
        "--gates",
        write(tmp_path / "g.yaml", [{"metric": "decode.tokens_per_s", "min_ratio": (lo + hi) / 2}]),
    )
    assert res.exit_code == 3, res.output


BAD = {
    "malformed_yaml": ("name: x\nstages: [\n  - method: rtn\n", "not valid YAML"),
    "unknown_key": ({"stagez": []}, "did you mean 'stages'"),
    "unknown_method": ({"stages": [{"method": "gptqq", "bits": 4}]}, "unknown method"),
    "wrong_type": ({"profile": {"repeats": "many"}}, "profile.repeats"),
    "bad_bits": ({"stages": [{"method": "rtn", "bits": 5}]}, "stages.0.bits"),
    "unknown_alias": ({"model": "smollm3-135m"}, "did you mean 'smollm2-135m'"),
    "bad_mask_structure": (
        {"stages": [{"method": "wanda", "mask_structure": "4:2"}]},
        "stages.0.mask_structure: '4:2' is not a mask structure",
    ),
    "structured_removes_nothing": (
        {"stages": [{"method": "structured"}]},
        "set at least one of layers, mlp, heads",
    ),
    "structured_fraction_out_of_range": (
        {"stages": [{"method": "structured", "layers": 1.5}]},
        "between 0 and 1",
    ),
    "distill_budget_of_zero": (
        {"stages": [{"method": "distill", "steps": 0}]},
        "stages.0.steps: Input should be greater than 0",
    ),
    "distill_without_budget": (
        {"stages": [{"method": "distill"}]},
        "set exactly one budget of steps, tokens, minutes",
    ),
    "prune_without_calibration": (
        {"stages": [{"method": "sparsegpt"}]},
        "stages.0 (sparsegpt) need calibration data but the recipe has no calibration block",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipes_exit_2_with_a_clear_message(good_run, tmp_path, tiny_model_dir, case):
    body, expected = BAD[case]
    if isinstance(body, dict):
        body = tiny_recipe(tiny_model_dir, **body)
    recipe = write(tmp_path / f"{case}.yaml", body)
    before = sorted(p.name for p in (good_run["out"] / "tiny-int4").iterdir())
    res = run("apply", recipe, "--out", good_run["out"], "--quick")
    assert res.exit_code == 2, res.output
    assert expected in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in (good_run["out"] / "tiny-int4").iterdir()) == before


def test_missing_recipe_path(tmp_path):
    res = run("apply", tmp_path / "nope.yaml")
    assert res.exit_code == 2 and "does not exist" in res.output


def test_missing_data_file_exit_2_and_names_both_places(
    good_run, tmp_path, tiny_model_dir, monkeypatch
):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("hub unreachable (test)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.delenv("COMPRESS_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    recipe = write(tmp_path / "r.yaml", tiny_recipe(tiny_model_dir))
    res = run("apply", recipe, "--out", tmp_path / "out", "--data-dir", tmp_path / "empty")
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "wiki.test.raw" in text and "'wikitext'" in text and "Traceback" not in text
    assert not (tmp_path / "out").exists()  # input errors surface before anything is written


def _apply_tiny(tmp_path, tiny_model_dir, tiny_data_dir, **over):
    """`compress apply --quick` on the tiny model in-process; (result, run folder or None)."""
    recipe = write(tmp_path / "r.yaml", tiny_recipe(tiny_model_dir, **over))
    out = tmp_path / "out"
    res = run(
        "apply", recipe, "--out", out, "--data-dir", tiny_data_dir, "--quick", "--no-progress"
    )
    runs = sorted((out / "tiny-int4").iterdir()) if (out / "tiny-int4").is_dir() else []
    return res, (runs[-1] if runs else None)


def _failure(run_dir: Path) -> dict:
    assert not (run_dir / "report.json").exists() and not (run_dir / "report.md").exists()
    run = json.loads((run_dir / "failure.json").read_text())["run"]
    assert run["status"] == "failed"
    return run


def _second_rtn_call(monkeypatch, second):
    """Let stages.0 (rtn) run for real and replace what stages.1 (rtn) does with `second`."""
    import dataclasses

    from compress.methods import METHODS

    real, calls = METHODS["rtn"], []

    def fake(ctx, cfg):
        calls.append(cfg)
        if len(calls) == 1:
            return real.apply(ctx, cfg)
        return second(ctx.model, cfg, ctx.calibration())

    monkeypatch.setitem(METHODS, "rtn", dataclasses.replace(real, apply=fake))


def test_stage_crash_exits_4_naming_the_stage(tmp_path, tiny_model_dir, tiny_data_dir, monkeypatch):
    def crash(handle, cfg, calib):
        raise RuntimeError("boom (test)")

    _second_rtn_call(monkeypatch, crash)
    res, run_dir = _apply_tiny(tmp_path, tiny_model_dir, tiny_data_dir)
    assert res.exit_code == 4, res.output
    text = " ".join(res.output.split())
    assert "stage 'compress: stages.1 (rtn)' failed: RuntimeError: boom (test)" in text, text
    failure = _failure(run_dir)
    assert failure["exit_code"] == 4 and failure["stage"] == "compress: stages.1 (rtn)"
    assert "boom (test)" in failure["error"] and "RuntimeError" in failure["traceback"]


def test_stage_producing_nan_is_a_failed_release_exit_1(
    tmp_path, tiny_model_dir, tiny_data_dir, monkeypatch
):
    import torch

    from compress.methods import StageRecord

    def poison(handle, cfg, calib):
        with torch.no_grad():
            handle.model.model.norm.weight.fill_(float("nan"))
        return StageRecord(method="rtn")

    _second_rtn_call(monkeypatch, poison)
    res, run_dir = _apply_tiny(tmp_path, tiny_model_dir, tiny_data_dir)
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "release failed at stage 'compress: stages.1 (rtn)'" in text, text
    assert "not finite" in text and "Traceback" not in text
    failure = _failure(run_dir)
    assert failure["exit_code"] == 1 and failure["stage"] == "compress: stages.1 (rtn)"
    assert "traceback" not in failure


def test_user_error_inside_a_stage_stays_exit_2(
    tmp_path, tiny_model_dir, tiny_data_dir, monkeypatch
):
    from compress.errors import BadInput

    def refuse(handle, cfg, calib):
        raise BadInput("this setting cannot work here (test)", fix="Change it.")

    _second_rtn_call(monkeypatch, refuse)
    res, run_dir = _apply_tiny(tmp_path, tiny_model_dir, tiny_data_dir)
    assert res.exit_code == 2, res.output
    assert "stage 'compress: stages.1 (rtn)': this setting" in " ".join(res.output.split())
    failure = _failure(run_dir)
    assert failure["exit_code"] == 2 and failure["stage"] == "compress: stages.1 (rtn)"


def test_group_size_that_does_not_divide_is_bad_input(tmp_path, tiny_model_dir, tiny_data_dir):
    stages = [{"method": "rtn", "bits": 4, "group_size": 256}]
    res, run_dir = _apply_tiny(tmp_path, tiny_model_dir, tiny_data_dir, stages=stages)
    assert "does not divide" in " ".join(res.output.split())
    assert _failure(run_dir)["stage"] == "compress: stages.0 (rtn)"
    assert res.exit_code == 2, res.output


def test_a_width_structured_leaves_for_a_later_group_is_refused_before_any_stage_runs(
    tmp_path, tiny_model_dir, tiny_data_dir, monkeypatch
):
    import dataclasses

    from compress.methods import METHODS

    ran = []
    fake = dataclasses.replace(METHODS["structured"], apply=lambda ctx, cfg: ran.append(cfg))
    monkeypatch.setitem(METHODS, "structured", fake)
    calib = tmp_path / "calib.txt"
    calib.write_text("Calibration text that is not the test split. " * 400)
    stages = [{"method": "structured", "mlp": 0.25}, {"method": "gptq", "group_size": 64}]
    res, run_dir = _apply_tiny(
        tmp_path, tiny_model_dir, tiny_data_dir, stages=stages,
        calibration={"dataset": str(calib), "samples": 2, "seq_len": 16},
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    said = " ".join(res.output.split())
    assert "stages.1.group_size 64 does not divide the 96" in said and "mlp_multiple" in said
    assert ran == [] and _failure(run_dir)["exit_code"] == 2  # nothing ran


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ({"method": "structured", "layers": [0, 1]}, "dropping all 2 layers leaves no model"),
        ({"method": "structured", "mlp": 0.01}, "mlp:"),
        ({"method": "distill", "steps": 2, "dataset": "EVAL"}, "evaluation"),
    ],
    ids=["drop_all_layers", "width_below_one_step", "distill_on_the_eval_split"],
)
def test_structured_and_distill_refusals_exit_2_naming_the_stage(
    tmp_path, tiny_model_dir, tiny_data_dir, stage, expected
):
    calib = tmp_path / "calib.txt"
    calib.write_text("Calibration text that is not the test split. " * 400)
    if stage.get("dataset") == "EVAL":
        stage = {**stage, "dataset": str(tiny_data_dir / "wikitext-2-raw" / "wiki.test.raw")}
    res, run_dir = _apply_tiny(
        tmp_path,
        tiny_model_dir,
        tiny_data_dir,
        stages=[stage],
        calibration={"dataset": str(calib), "samples": 2, "seq_len": 16},
    )
    assert res.exit_code == 2, res.output
    assert expected in " ".join(res.output.split()) and "Traceback" not in res.output
    assert _failure(run_dir)["stage"] == f"compress: stages.0 ({stage['method']})"


def test_ctrl_c_in_a_stage_exits_130_with_failure_json(
    tmp_path, tiny_model_dir, tiny_data_dir, monkeypatch
):
    def interrupt(handle, cfg, calib):
        raise KeyboardInterrupt

    _second_rtn_call(monkeypatch, interrupt)
    res, run_dir = _apply_tiny(tmp_path, tiny_model_dir, tiny_data_dir)
    assert res.exit_code == 130, res.output
    assert "interrupted by SIGINT" in res.output
    failure = _failure(run_dir)
    assert (failure["exit_code"], failure["signal"]) == (130, "SIGINT")


def test_profiling_worker_crash_exits_4_naming_profile(
    tmp_path, tiny_model_dir, tiny_data_dir, monkeypatch
):
    """The worker process really crashes (a sitecustomize on its PYTHONPATH breaks its model
    loader): exit 4, "stage 'profile' failed", failure.json names the stage."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import compress.models\n"
        "def _crash(*a, **k):\n"
        "    raise RuntimeError('worker crash (test)')\n"
        "compress.models.load = _crash\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(hook))
    res, run_dir = _apply_tiny(tmp_path, tiny_model_dir, tiny_data_dir)
    assert res.exit_code == 4, res.output
    text = " ".join(res.output.split())
    assert "stage 'profile' failed: Profiling" in text and "worker crash (test)" in text
    failure = _failure(run_dir)
    assert failure["exit_code"] == 4 and failure["stage"] == "profile"


def _workers(pid: int) -> list[int]:
    """PIDs of the profiling workers `pid` started."""
    kids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
        except OSError:
            continue
        cmdline = status.with_name("cmdline")
        if fields.get("PPid", "").strip() == str(pid) and b"compress.profile.worker" in (
            cmdline.read_bytes() if cmdline.exists() else b""
        ):
            kids.append(int(status.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_sigterm_writes_failure_json_kills_the_worker_and_exits_143(
    tmp_path, tiny_model_dir, tiny_data_dir
):
    import os
    import signal
    import time

    slow = {"prompt_tokens": 16, "new_tokens": 64, "repeats": 50, "quick_repeats": 50}
    recipe = write(tmp_path / "r.yaml", tiny_recipe(tiny_model_dir, profile=slow))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "compress", "apply", str(recipe), "--out", str(out)]
    cmd += ["--data-dir", str(tiny_data_dir), "--quick", "--no-progress"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 240
        workers: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            runs = list((out / "tiny-int4").glob("*")) if (out / "tiny-int4").is_dir() else []
            workers = _workers(proc.pid) if runs else []
            if workers:  # the run folder exists and the profiling worker is running
                break
            time.sleep(0.2)
        assert workers and proc.poll() is None, "the profiling worker never started"
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, output
    assert "interrupted by SIGTERM" in output
    (run_dir,) = list((out / "tiny-int4").iterdir())
    failure = _failure(run_dir)
    assert (failure["exit_code"], failure["signal"]) == (143, "SIGTERM")
    time.sleep(0.5)
    assert not any(_alive(pid) for pid in workers), "the profiling worker outlived the run"


def test_output_dir_not_writable(tmp_path, tiny_model_dir, tiny_data_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    recipe = write(tmp_path / "r.yaml", tiny_recipe(tiny_model_dir))
    res = run("apply", recipe, "--out", blocker / "sub", "--data-dir", tiny_data_dir)
    assert res.exit_code == 2 and "cannot be created" in " ".join(res.output.split())


def test_validate_imports_no_torch(tmp_path, tiny_model_dir):
    recipe = write(tmp_path / "r.yaml", tiny_recipe(tiny_model_dir))
    code = (
        "import sys; from typer.testing import CliRunner; from compress.cli import app; "
        f"r = CliRunner().invoke(app, ['validate', {str(recipe)!r}]); "
        "assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("model", "code"),
    [
        ("no-such-model-alias", 2),
        ("smollm2-13m", 2),
        ("smollm2-135m", 0),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", 0),
        ("FOLDER", 0),
    ],
)
def test_validate_checks_the_model_field(tmp_path, tiny_model_dir, model, code):
    model = str(tiny_model_dir) if model == "FOLDER" else model
    res = run("validate", write(tmp_path / "r.yaml", tiny_recipe(tiny_model_dir, model=model)))
    assert res.exit_code == code, res.output
    text = " ".join(res.output.split())
    if code:
        assert f"model: '{model}' is neither a packaged alias" in text and "Traceback" not in text
    else:
        assert f"model '{model}'" in text
    if model == "smollm2-13m":
        assert "did you mean 'smollm2-135m'" in text


def test_validate_refuses_a_gate_against_its_metric_direction(tmp_path, tiny_model_dir):
    gates = [
        {"metric": "weights.bytes", "max_ratio": 0.5},
        {"metric": "decode.tokens_per_s@bs8", "max_relative_increase": 0.05},
    ]
    res = run("validate", write(tmp_path / "r.yaml", tiny_recipe(tiny_model_dir, gates=gates)))
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "gates.1: 'max_relative_increase'" in text
    assert "decode.tokens_per_s@bs8 is higher-is-better" in text


def test_schema_and_help():
    res = run("schema")
    assert res.exit_code == 0 and json.loads(res.output)["title"].startswith("compress recipe")
    assert json.loads(run("schema", "report").output)["title"].startswith("compress report")
    for cmd in ("apply", "validate", "models", "report", "gate", "schema"):
        assert run(cmd, "--help").exit_code == 0


def test_shipped_recipes_validate():
    for recipe in sorted(Path(__file__).resolve().parents[1].glob("recipes/*.yaml")):
        res = run("validate", recipe)
        assert res.exit_code == 0, (recipe, res.output)


def test_pruning_recipe_composes_and_reports_what_it_saved(tmp_path, tiny_model_dir, tiny_data_dir):
    """sparsegpt then gptq (zeros kept) through `compress apply`: the report carries the
    sparsity, says pruning alone saves nothing here, and the int4 storage really shrinks.
    Untimed: what each stage stores is the subject (tests/profile covers timing)."""
    calib = {"dataset": str(tiny_data_dir / "wikitext-2-raw" / "wiki.test.raw"), "samples": 4}
    recipe = tiny_recipe(
        tiny_model_dir,
        name="tiny-prune",
        stages=[
            {"method": "sparsegpt", "mask_structure": "2:4"},
            {"method": "gptq", "bits": 4, "group_size": 32, "preserve_zeros": True},
        ],
        calibration={**calib, "seq_len": 32},
        gates=[{"metric": "weights.bytes", "max_ratio": 0.5}],
        profile={"enabled": False},
    )
    out = tmp_path / "reports"
    args = ("--out", out, "--quick", "--data-dir", tiny_data_dir, "--no-progress")
    res = run("apply", write(tmp_path / "p.yaml", recipe), *args)
    assert res.exit_code == 0, res.output
    data = json.loads(next((out / "tiny-prune").iterdir()).joinpath("report.json").read_text())
    prune, quant = data["variants"][0]["record"]["stages"]
    assert prune["method"] == "sparsegpt"
    assert prune["details"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    # the stage contract: bytes around each stage measured by the pipeline, not claimed
    assert prune["bytes_before"] == prune["bytes_after"] and prune["saves_memory"] is False
    assert prune["saves_time"] is False and prune["config"]["mask_structure"] == "2:4"
    assert quant["bytes_after"] < quant["bytes_before"] == prune["bytes_after"]
    assert quant["saves_memory"] is True
    assert "saves no memory and no time" in " ".join(prune["notes"])
    assert any(n.startswith("preserve_zeros: the 50.") for n in quant["notes"])
    by = {c["metric"]: c for c in data["variants"][0]["comparisons"]}
    assert by["weights.bytes"]["ratio"] < 0.5
    # pruning alone: no bytes saved, and the report does not pretend otherwise
    alone = {**recipe, "name": "tiny-prune-only", "stages": recipe["stages"][:1], "gates": []}
    res = run("apply", write(tmp_path / "q.yaml", alone), *args)
    assert res.exit_code == 0, res.output
    run_dir = next((out / "tiny-prune-only").iterdir())
    data = json.loads(run_dir.joinpath("report.json").read_text())
    md = run_dir.joinpath("report.md").read_text()
    assert "this stage alone saves no memory" in md and "kernel `" not in md
    by = {c["metric"]: c for c in data["variants"][0]["comparisons"]}
    assert by["weights.bytes"]["ratio"] == pytest.approx(1.0)
    assert by["weights.bytes"]["verdict"] != "better"


@pytest.mark.gpu
def test_apply_on_cuda_end_to_end(tmp_path, tiny_model_dir, tiny_data_dir):
    """The whole loop on the GPU: CUDA kernels, allocator peaks, NVML energy, gpu named."""
    recipe = write(tmp_path / "tiny.yaml", tiny_recipe(tiny_model_dir))
    out = tmp_path / "reports"
    res = run(
        "apply",
        recipe,
        "--out",
        out,
        "--quick",
        "--device",
        "cuda",
        "--data-dir",
        tiny_data_dir,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    data = json.loads(next((out / "tiny-int4").iterdir()).joinpath("report.json").read_text())
    assert data["environment"]["device"].startswith("cuda") and data["environment"]["gpu"]
    by = {m["name"]: m for m in data["variants"][0]["record"]["measurements"]}
    assert by["memory.peak_allocated_bytes"]["value"] > 0
    assert by["energy.joules_per_token"]["status"] == "measured", by["energy.joules_per_token"]


def test_resume_continues_an_interrupted_run_in_its_folder(
    tmp_path, tiny_model_dir, tiny_data_dir, monkeypatch
):
    def interrupt(handle, cfg, calib):
        raise KeyboardInterrupt

    untimed = {"enabled": False}  # resuming is the subject: the run's stages, not its timing
    with monkeypatch.context() as m:
        _second_rtn_call(m, interrupt)
        res, run_dir = _apply_tiny(tmp_path, tiny_model_dir, tiny_data_dir, profile=untimed)
    assert res.exit_code == 130 and (run_dir / "failure.json").exists()
    recipe = tmp_path / "r.yaml"
    other = write(tmp_path / "other.yaml", tiny_recipe(tiny_model_dir, seed=7))
    args = ["--data-dir", tiny_data_dir, "--quick", "--no-progress", "--resume", run_dir]
    res = run("apply", other, *args)  # another recipe's run: refused, nothing touched
    assert res.exit_code == 2 and "another recipe" in res.output
    assert (run_dir / "failure.json").exists()
    res = run("apply", recipe, *args)
    assert res.exit_code == 0, res.output
    assert (run_dir / "report.json").exists() and not (run_dir / "failure.json").exists()
    (kept,) = run_dir.glob("failure.*.json")  # the interrupted attempt's record is kept
    report = json.loads((run_dir / "report.json").read_text())
    assert report["run"]["resumed_after"]["exit_code"] == 130
    assert report["run"]["resumed_after"]["failure_json"] == kept.name
    res = run("apply", recipe, *args)  # a finished run is not resumed
    assert res.exit_code == 2 and "that run finished" in res.output

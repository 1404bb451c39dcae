"""`compress evals` and `compress eval` on the tiny model with a task folder of its own."""

from __future__ import annotations

import json

from test_cli import run


def _task(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"q": f"q{i}", "a": "yes", "b": "no", "label": i % 2} for i in range(6)]
    (data / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "t.yaml").write_text(
        "task: tiny_task\ndataset_path: json\ndataset_kwargs: {data_files: t.jsonl}\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: label\ndoc_to_choice: '{{[a, b]}}'\n"
    )
    (tasks / "lm.yaml").write_text(
        "task: tiny_lm\ndataset_path: json\ndataset_kwargs: {data_files: t.jsonl}\n"
        "output_type: loglikelihood\ndoc_to_text: '{{q}} is'\ndoc_to_target: '{{\" \" + a}}'\n"
    )
    return tasks, data


def test_evals_lists_builtin_and_included_tasks(tmp_path):
    tasks, data = _task(tmp_path)
    res = run("evals", "--include-path", tasks, "--data-dir", data)
    assert res.exit_code == 0, res.output
    assert "tiny_task" in res.output and "piqa" in res.output


def test_eval_runs_a_task_and_writes_json_once(tmp_path, tiny_model_dir):
    tasks, data = _task(tmp_path)
    out = tmp_path / "r.json"
    args = ("--tasks", "tiny_task", "--include-path", tasks, "--data-dir", data, "--no-progress")
    res = run("eval", tiny_model_dir, *args, "--output", out, "--batch-size", "4")
    assert res.exit_code == 0, res.output
    assert "tiny_task.acc" in res.output and "tiny_task.acc_norm" in res.output
    doc = json.loads(out.read_text())
    (task,) = doc["tasks"]
    assert task["items"] == 6 and task["requests"] == 12 and len(task["data_sha256"]) == 64
    (acc, _) = task["measurements"]["model"]
    assert acc["n"] == 6 and acc["ci95"][0] <= acc["value"] <= acc["ci95"][1]
    assert acc["value"] == sum(task["hits"]["model"]["acc"]) / 6
    again = run("eval", tiny_model_dir, *args, "--output", out)
    assert again.exit_code == 2 and "never overwritten" in again.output


def test_unknown_task_is_bad_input_before_any_model_loads(tmp_path):
    res = run("eval", tmp_path / "no-such-model", "--tasks", "arc_esay")
    assert res.exit_code == 2 and "did you mean 'arc_easy'" in res.output


def test_a_recipe_gates_on_a_task_metric_compared_item_by_item(
    tmp_path, tiny_model_dir, tiny_data_dir
):
    from test_cli import tiny_recipe, write

    tasks, data = _task(tmp_path)
    for f in tiny_data_dir.rglob("*"):  # the task data beside the WikiText copy
        if f.is_file():
            dest = data / f.relative_to(tiny_data_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.read_bytes())
    recipe = tiny_recipe(
        tiny_model_dir,
        name="tiny-task",
        stages=[{"method": "rtn", "bits": 8}],
        eval={
            "wikitext2": {"seq_len": 64, "max_windows": 2, "quick_windows": 2},
            "tasks": ["tiny_task", "tiny_lm"],
            "include_path": [str(tasks)],
            "batch_size": 3,
        },
        profile={"enabled": False},
        gates=[
            {"metric": "tiny_task.acc", "min_ratio": 0.5},
            {"metric": "tiny_lm.perplexity", "max_ratio": 5.0},
        ],
    )
    out = tmp_path / "reports"
    args = ("--out", out, "--quick", "--data-dir", data, "--no-progress")
    res = run("apply", write(tmp_path / "r.yaml", recipe), *args)
    assert res.exit_code in (0, 3), res.output
    run_dir = next((out / "tiny-task").iterdir())
    rep = json.loads((run_dir / "report.json").read_text())
    (v,) = rep["variants"]
    c = next(x for x in v["comparisons"] if x["metric"] == "tiny_task.acc")
    assert c["paired"] and c["scale"] == "bootstrap" and c["n"] == 6
    assert set(c["flips"]) == {"lost", "gained"} and c["p_value"] is not None
    assert [g["metric"] for g in v["gates"]] == ["tiny_task.acc", "tiny_lm.perplexity"]
    ppl = next(x for x in v["comparisons"] if x["metric"] == "tiny_lm.perplexity")
    assert ppl["paired"] and ppl["higher_is_better"] is False and ppl["flips"] is None
    assert ppl["ratio_ci95"][0] <= ppl["ratio"] <= ppl["ratio_ci95"][1]
    assert v["gates"][1]["status"] in ("pass", "fail", "inconclusive")
    task_data = next(d for d in rep["data"] if d["name"] == "task tiny_task")
    assert task_data["items"] == 6 and len(task_data["spec_sha256"]) == 64
    md = (run_dir / "report.md").read_text()
    assert "Items that changed against the baseline" in md and "| tiny_task.acc |" in md


def test_a_gate_on_a_task_the_recipe_does_not_run_is_refused(tmp_path, tiny_model_dir):
    from test_cli import tiny_recipe, write

    recipe = tiny_recipe(tiny_model_dir, gates=[{"metric": "piqa.acc", "min_ratio": 0.9}])
    recipe["eval"]["tasks"] = ["sst2"]
    res = run("validate", write(tmp_path / "r.yaml", recipe))
    assert res.exit_code == 2 and "does not run" in res.output
    recipe["eval"]["tasks"] = ["sst3"]
    res = run("validate", write(tmp_path / "r.yaml", recipe))
    assert res.exit_code == 2 and "did you mean 'sst2'" in res.output

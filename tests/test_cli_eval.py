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

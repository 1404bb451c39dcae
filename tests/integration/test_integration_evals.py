"""Every shipped eval task on the real packaged models (a few items each): the commands a user
runs, real data, real tokenizers. Scores are not asserted (that is the benchmark's job,
benchmarks/evals_vs_lm_eval.py); what is asserted: each task ran on the items it said, each
metric carries unit, n and an interval, the cache answers a rerun, and an encoder task on a
causal model is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _eval(model: str, tasks: str, out: Path, data: Path, *extra: str, limit: int = 12):
    cmd = [sys.executable, "-m", "compress", "eval", model, "--tasks", tasks, "--limit",
           str(limit), "--data-dir", str(data), "--no-progress", "--output", str(out),
           *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def test_causal_tasks_on_smollm2_and_sts_b_on_minilm(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_EVAL_CACHE", str(tmp_path / "cache"))
    tasks = "piqa,arc_easy,hellaswag,sst2,lambada_openai"
    proc = _eval("smollm2-135m", tasks, tmp_path / "a.json", shared_data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "a.json").read_text())
    assert [t["task"] for t in doc["tasks"]] == tasks.split(",")
    for t in doc["tasks"]:
        assert t["items"] == 12 and len(t["data_sha256"]) == 64 and t["cached"] == {}
        for m in t["measurements"]["model"]:
            assert m["n"] == 12 and m["unit"] and m["ci95"][0] <= m["value"] <= m["ci95"][1]
    # the rolling task: the shortest articles would still be thousands of tokens; one article
    # (its 62 in the file are read and regrouped) in windows of 128 tokens
    wiki = _eval("smollm2-135m", "wikitext2,lambada_openai", tmp_path / "w.json", shared_data,
                 "--max-length", "128", limit=1)  # fmt: skip
    assert wiki.returncode == 0, wiki.stderr[-3000:]
    (w, _) = json.loads((tmp_path / "w.json").read_text())["tasks"]
    assert w["max_length"] == 128 and w["requests"] > 10
    assert [m["unit"] for m in w["measurements"]["model"]] == ["ppl", "ppl", "bits/byte"]
    again = _eval("smollm2-135m", "lambada_openai", tmp_path / "b.json", shared_data)
    assert again.returncode == 0, again.stderr[-3000:]
    (lam,) = json.loads((tmp_path / "b.json").read_text())["tasks"]
    first = next(t for t in doc["tasks"] if t["task"] == "lambada_openai")
    assert "eval cache" in lam["cached"]["model"]
    assert lam["measurements"] == first["measurements"]
    sts = _eval("minilm-l6", "sts_b", tmp_path / "c.json", shared_data)
    assert sts.returncode == 0, sts.stderr[-3000:]
    (res,) = json.loads((tmp_path / "c.json").read_text())["tasks"]
    assert [m["name"] for m in res["measurements"]["model"]] == ["sts_b.spearman", "sts_b.pearson"]
    wrong = _eval("smollm2-135m", "sts_b", tmp_path / "d.json", shared_data)
    assert wrong.returncode == 2 and "needs an encoder" in wrong.stdout + wrong.stderr

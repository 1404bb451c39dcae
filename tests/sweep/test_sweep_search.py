"""Budgeted search: which screened points become full trials, which full trial is chosen,
and a tiny `objective: cheapest` sweep end to end."""

from __future__ import annotations

import json

import pytest
from test_cli import run, tiny_recipe, write  # tests/ is on sys.path (rootdir conftest)

from compress.sweep.search import Screened, choose, screened, select_candidates


def S(name, loss, weights, failed=False):  # noqa: N802
    return Screened(name, loss, weights, failed, "done")


def test_the_front_and_the_margin_are_kept_dominated_points_are_not():
    pts = [
        S("small-bad", 0.30, 0.20),
        S("small-ok", 0.05, 0.25),
        S("mid-close", 0.055, 0.30),  # within 1% of small-ok's loss: the quick eval cannot rank
        S("mid-worse", 0.20, 0.30),  # beaten by small-ok by far, with fewer weights
        S("big-best", 0.01, 0.40),
    ]
    sel = select_candidates(pts, margin=0.01, max_candidates=10)
    assert {n for n, (keep, _) in sel.items() if keep} == {
        "small-bad", "small-ok", "mid-close", "big-best",
    }  # fmt: skip
    assert "dominated: small-ok" in sel["mid-worse"][1]


def test_failed_quality_gates_missing_numbers_and_the_cap():
    pts = [S("a", 0.01, 0.2, failed=True), Screened("b", None, None, False, "failed")]
    pts += [S("c", 0.02, 0.3), S("d", 0.01, 0.5)]
    sel = select_candidates(pts, margin=0.0, max_candidates=1)
    assert sel["a"] == (False, "fails a quality gate already on the quick eval")
    assert "screen trial failed" in sel["b"][1]
    assert sel["c"][0] and not sel["d"][0] and "max_candidates=1" in sel["d"][1]


def _rec(exit_code, cost=None, decode=None, ppl=1.02):
    h = {"wikitext2.perplexity": {"ratio": ppl}}
    if cost is not None:
        h["cost.usd_per_million_tokens"] = {"ratio": cost}
    if decode is not None:
        h["decode.tokens_per_s"] = {"ratio": decode}
    return {"status": "done", "exit_code": exit_code, "headline": h}


def test_the_cheapest_passing_candidate_is_chosen_and_why():
    name, why = choose({"a": _rec(0, cost=0.5), "b": _rec(0, cost=0.4), "c": _rec(1, cost=0.1)})
    assert name == "b" and "0.400x" in why and "serving cost" in why and "+2.00%" in why
    name, why = choose({"a": _rec(0, decode=2.0), "b": _rec(0, decode=1.5)})
    assert name == "a" and "decode time" in why
    assert choose({"a": _rec(3, cost=0.2)}) == (
        None,
        "no candidate passed every gate in its full trial",
    )


def test_screened_reads_a_trial_record():
    rec = {
        "status": "done",
        "headline": {
            "wikitext2.perplexity": {"ratio": 1.1},
            "weights.bytes": {"ratio": 0.3},
            "gates": [{"metric": "wikitext2.perplexity", "status": "fail"}],
        },
    }
    s = screened("x", rec)
    assert s.loss == pytest.approx(0.1) and s.weights == 0.3 and s.quality_failed
    assert screened("y", None).status == "not run"


def test_a_tiny_cheapest_search_runs_end_to_end(tmp_path, tiny_model_dir, tiny_data_dir):
    recipe = tiny_recipe(
        tiny_model_dir, name="tiny-base",
        profile=dict(tiny_recipe(tiny_model_dir)["profile"], kernels="fixed", batch_sizes=[1],
                     prefill_lengths=[]),
        gates=[{"metric": "weights.bytes", "max_ratio": 0.6}],
    )  # fmt: skip
    write(tmp_path / "base.yaml", recipe)
    s = write(
        tmp_path / "s.yaml",
        {
            "name": "tiny-search", "recipe": "base.yaml", "objective": "cheapest",
            "space": {"stages.0.bits": [4, 8], "stages.0.group_size": [32, None]},
            "search": {"margin": 0.0, "max_candidates": 1},
        },
    )  # fmt: skip
    out = tmp_path / "out"
    res = run("sweep", s, "--out", out, "--executor", "local", "--quick",
              "--data-dir", tiny_data_dir, "--no-progress")  # fmt: skip
    data = json.loads((out / "tiny-search" / "sweep.json").read_text())
    sel = data["search"]["selection"]
    full = {t["name"] for t in data["trials"] if t.get("status") == "done"}
    valid = {t["name"] for t in data["trials"] if t["status"] != "skipped"}
    assert set(sel) == valid and len(valid) >= 2  # every valid point was screened
    assert full == {n for n, v in sel.items() if v["selected"]} and len(full) == 1
    assert (out / "tiny-search" / "screen").is_dir()
    for name in full:  # full trials are timed; screen trials are not
        rep = json.loads(
            (out / "tiny-search" / _trial(data, name)["run_dir"] / "report.json").read_text()
        )
        assert any(m["name"] == "decode.tokens_per_s" for m in rep["baseline"]["measurements"])
    chosen = data["search"]["chosen"]
    assert chosen["name"] in full and res.exit_code == 0, res.output  # the weights gate holds
    assert f"Chosen: {chosen['name']}" in (out / "tiny-search" / "compare.md").read_text()
    assert "chosen:" in res.output


def _trial(data, name):
    return next(t for t in data["trials"] if t["name"] == name)


def test_the_shipped_search_screens_without_its_speed_gates(tmp_path):
    """The screen is untimed, so a gate on a timed metric (recipes/int4.yaml's decode gate)
    leaves its screen recipes (running them refused it as bad input: found by running the
    shipped search on SmolLM2); the full trials keep every gate."""
    from pathlib import Path

    from compress.recipe import parse_recipe
    from compress.sweep.local import load_sweep, plan

    repo = Path(__file__).resolve().parents[2]
    spec, base, points = load_sweep(repo / "sweeps" / "smollm2-int4-cheapest.yaml")
    assert "decode.tokens_per_s" in [g.metric for g in base.gates]
    for rung, timed in (("screen", False), ("trials", True)):
        jobs = plan(spec, base, points, tmp_path, quick=False, data_dir=None, argv=[], rung=rung)
        assert jobs
        for j in jobs:
            r = parse_recipe(j.recipe, source="test")  # valid, as the trial will load it
            metrics = [g.metric for g in r.gates]
            assert ("decode.tokens_per_s" in metrics) is timed and r.profile.enabled is timed
            assert "wikitext2.perplexity" in metrics and "weights.bytes" in metrics

"""compress.recipe / compress.metrics: gate metrics, gate directions, the `model:` field."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from compress.errors import BadInput
from compress.metrics import KNOWN_METRICS as METRICS_TABLE
from compress.metrics import Metric, direction_problem, metric_info
from compress.recipe import KNOWN_METRICS, Gate, load_recipe, parse_gates, parse_recipe

HIGHER = sorted(n for n, m in KNOWN_METRICS.items() if m.higher_is_better and not m.relative)
LOWER = sorted(n for n, m in KNOWN_METRICS.items() if not m.higher_is_better and not m.relative)
RELATIVE = sorted(n for n, m in KNOWN_METRICS.items() if m.relative)
WRONG_FOR_HIGHER = ("max_relative_increase", "max_increase", "max_ratio")
RIGHT_FOR_HIGHER = ("min_ratio", "max_value", "min_value")
WRONG_FOR_LOWER = ("min_ratio",)
RIGHT_FOR_LOWER = ("max_relative_increase", "max_increase", "max_ratio", "max_value", "min_value")


def _recipe(**over) -> dict:
    r = {"name": "t", "model": "smollm2-135m", "stages": [{"method": "rtn", "bits": 4}]}
    r.update(over)
    return r


def test_known_metrics_table():
    assert KNOWN_METRICS is METRICS_TABLE  # recipe re-exports the one table
    assert all(isinstance(m, Metric) and m.description for m in KNOWN_METRICS.values())
    expected = {
        "decode.tokens_per_s": True,
        "prefill.tokens_per_s": True,
        "e2e.tokens_per_s": True,
        "kld.top1_agreement": True,
        "wikitext2.perplexity": False,
        "decode.latency_ms_per_token": False,
        "decode.latency_ms_p90": False,
        "decode.latency_ms_p99": False,
        "memory.rss_after_load_bytes": False,
        "weights.bytes": False,
    }
    for name, higher in expected.items():
        assert KNOWN_METRICS[name].higher_is_better is higher, name


@pytest.mark.parametrize("metric", HIGHER)
@pytest.mark.parametrize("kind", WRONG_FOR_HIGHER)
def test_growth_caps_refused_on_higher_is_better(metric, kind):
    with pytest.raises(BadInput) as ei:
        parse_recipe(
            _recipe(
                gates=[{"metric": "weights.bytes", "max_ratio": 0.5}, {"metric": metric, kind: 1.0}]
            )
        )
    text = " ".join(str(ei.value).split())
    assert f"gates.1: '{kind}'" in text and f"{metric} is higher-is-better" in text
    assert "use min_ratio or min_value" in text


@pytest.mark.parametrize("metric", LOWER)
def test_min_ratio_refused_on_lower_is_better(metric):
    with pytest.raises(BadInput) as ei:
        parse_recipe(_recipe(gates=[{"metric": metric, "min_ratio": 1.5}]))
    text = " ".join(str(ei.value).split())
    assert "gates.0: 'min_ratio'" in text and f"{metric} is lower-is-better" in text


@pytest.mark.parametrize(
    ("metric", "kind"),
    [(m, k) for m in HIGHER for k in RIGHT_FOR_HIGHER]
    + [(m, k) for m in LOWER for k in RIGHT_FOR_LOWER],
)
def test_matching_directions_accepted(metric, kind):
    gate = parse_recipe(_recipe(gates=[{"metric": metric, kind: 0.5}])).gates[0]
    assert (gate.metric, gate.kind) == (metric, kind)
    assert direction_problem(kind, metric, KNOWN_METRICS[metric]) is None


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("decode.tokens_per_s@bs8", "decode.tokens_per_s"),
        ("prefill.tokens_per_s@p512", "prefill.tokens_per_s"),
        ("prefill.latency_ms@p2048", "prefill.latency_ms"),
        ("decode.latency_ms_p99@bs1", "decode.latency_ms_p99"),
        ("e2e.tokens_per_s@bs8", "e2e.tokens_per_s"),
        ("memory.peak_rss_bytes@bs8", "memory.peak_rss_bytes"),
        ("cost.usd_per_million_tokens@bs8", "cost.usd_per_million_tokens"),
    ],
)
def test_suffixed_metric_names_take_their_base_direction(name, base):
    assert metric_info(name) is KNOWN_METRICS[base]
    good = "min_ratio" if KNOWN_METRICS[base].higher_is_better else "max_ratio"
    bad = "max_ratio" if KNOWN_METRICS[base].higher_is_better else "min_ratio"
    assert Gate(metric=name, **{good: 1.0}).metric == name
    with pytest.raises(ValidationError, match="is (higher|lower)-is-better"):
        Gate(metric=name, **{bad: 1.0})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("decode.tokens_per_s@b8", "unknown suffix '@b8'"),
        ("decode.tokens_per_s@bs0", "unknown suffix '@bs0'"),
        ("decode.tokens_per_s@bs", "unknown suffix '@bs'"),
        ("decode.tokens_per_s@bs8@p512", "unknown suffix '@bs8@p512'"),
        ("decode.tokens_per_s@", "unknown suffix '@'"),
        ("prefill.tokens_per_s@x512", "expected @bs<N> (batch size) or @p<N>"),
        ("wikitext2.perplexity@bs8", "does not depend on the batch size"),
        ("weights.bytes@p512", "does not depend on the prompt length"),
        ("decode.token_per_s@bs8", "did you mean 'decode.tokens_per_s'"),
        ("decode.tokens_per_sec", "did you mean 'decode.tokens_per_s'"),
    ],
)
def test_unknown_metric_names_and_suffixes_refused(name, expected):
    with pytest.raises(BadInput) as ei:
        parse_recipe(_recipe(gates=[{"metric": name, "max_value": 1.0}]))
    text = " ".join(str(ei.value).split())
    assert "gates.0.metric:" in text and expected in text


def test_gates_file_refuses_a_wrong_direction(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump({"gates": [{"metric": "wikitext2.nll", "min_ratio": 0.5}]}))
    with pytest.raises(BadInput, match=r"gates\.0: 'min_ratio'.*wikitext2\.nll is lower-is-better"):
        parse_gates(p)


@pytest.mark.parametrize("metric", RELATIVE)
def test_divergences_take_only_absolute_bounds(metric):
    assert metric.startswith("kld.")
    for kind in ("min_ratio", "max_ratio", "max_relative_increase", "max_increase"):
        with pytest.raises(BadInput, match="already a divergence from the baseline"):
            parse_recipe(_recipe(gates=[{"metric": metric, kind: 0.5}]))
    gate = parse_recipe(_recipe(gates=[{"metric": metric, "max_value": 0.5}])).gates[0]
    assert gate.kind == "max_value"


# -- model: -------------------------------------------------------------------------------


def _write(tmp_path, model: str):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(_recipe(model=model)))
    return p


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("no-such-model-alias", "is neither a packaged alias"),
        ("smollm2-13m", "did you mean 'smollm2-135m'"),
        ("./missing/folder", "is neither a packaged alias"),
        ("/no/such/model.gguf", "is neither a packaged alias"),
        ("owner/name/extra", "nor a Hugging Face hub id 'owner/name'"),
    ],
)
def test_load_recipe_refuses_an_unknown_model(tmp_path, model, expected):
    with pytest.raises(BadInput) as ei:
        load_recipe(_write(tmp_path, model))
    text = " ".join(str(ei.value).split())
    assert "- model: " in text and expected in text


def test_load_recipe_refuses_a_file_that_is_not_gguf(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(BadInput, match="exists but is neither a folder nor a .gguf file"):
        load_recipe(_write(tmp_path, str(f)))


def test_load_recipe_accepts_alias_folder_gguf_and_hub_id(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    gguf = tmp_path / "m.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    for model in ("smollm2-135m", str(folder), str(gguf), "HuggingFaceTB/SmolLM2-135M"):
        assert load_recipe(_write(tmp_path, model)).model == model


def test_recipe_object_does_not_check_paths():
    """A saved report's recipe may name a path of another machine: `compress gate` re-reads
    it without the `model:` check (only load_recipe, i.e. validate and apply, checks)."""
    assert parse_recipe(_recipe(model="/elsewhere/model")).model == "/elsewhere/model"


def test_every_metric_is_defined_once_with_unit_producer_and_definition():
    from compress.metrics import definitions, register_metric

    for name, m in KNOWN_METRICS.items():
        assert (
            m.unit
            and m.definition
            and m.producer
            in {
                "stages",
                "profile",
                "eval.wikitext2",
                "eval.kld",
                "eval.tasks",
            }
        ), name
    assert set(definitions()) == set(KNOWN_METRICS)
    same = KNOWN_METRICS["kld.mean"]
    assert register_metric("kld.mean", same) is same  # re-registering the same: fine
    with pytest.raises(ValueError, match="already defined"):
        register_metric("kld.mean", Metric("other", higher_is_better=True))


def test_a_registered_task_metric_can_be_gated(monkeypatch):
    from compress.metrics import register_metric

    with pytest.raises(BadInput, match="unknown metric 'mytask.acc'"):
        parse_recipe(_recipe(gates=[{"metric": "mytask.acc", "min_value": 0.5}]))
    acc = Metric("accuracy", higher_is_better=True, unit="fraction", producer="stages")
    monkeypatch.setitem(KNOWN_METRICS, "mytask.acc", acc)  # removed again after the test
    register_metric("mytask.acc", acc)  # what an eval task does when its spec loads
    r = parse_recipe(_recipe(gates=[{"metric": "mytask.acc", "min_value": 0.5}]))
    assert r.gates[0].metric == "mytask.acc"


@pytest.mark.parametrize(
    ("over", "metric", "fix"),
    [
        ({"eval": {"kld": None}}, "kld.mean", "eval.kld: {enabled: true}"),
        ({"eval": {"kld": {"enabled": False}}}, "kld.top1_agreement", "eval.kld"),
        ({"eval": {"wikitext2": None}}, "kld.mean", "eval.kld"),
        ({"eval": {"wikitext2": None}}, "wikitext2.perplexity", "set eval.wikitext2"),
        ({"profile": {"enabled": False}}, "decode.tokens_per_s@bs8", "profile.enabled: true"),
    ],
)
def test_gate_on_a_metric_the_recipe_turns_off_is_refused_at_validate(over, metric, fix):
    gate = {"metric": metric, "max_value": 1e9}
    with pytest.raises(BadInput, match=r"gates\.0") as e:
        parse_recipe(_recipe(gates=[gate], **over))
    assert fix in str(e.value) and "could never be decided" in str(e.value)


def test_gates_on_produced_metrics_including_kld_are_accepted():
    gates = [
        {"metric": "kld.mean", "max_value": 0.05},
        {"metric": "kld.top1_agreement", "min_value": 0.9},
        {"metric": "weights.bytes", "max_ratio": 0.5},
    ]
    assert len(parse_recipe(_recipe(gates=gates)).gates) == 3
    no_profile = _recipe(gates=gates[2:], profile={"enabled": False})
    assert parse_recipe(no_profile).gates[0].metric == "weights.bytes"


def test_divergences_are_relative_metrics_and_nothing_else_is():
    from compress.metrics import is_relative

    relative = sorted(n for n in KNOWN_METRICS if is_relative(n))
    assert relative == sorted(
        ["kld.mean", "kld.top1_agreement", "kld.median", "kld.p90", "kld.p95", "kld.p99"]
        + ["kld.p99_9", "kld.max", "kld.same_top1"]
    )
    assert not is_relative("decode.tokens_per_s@bs8") and not is_relative("no.such")

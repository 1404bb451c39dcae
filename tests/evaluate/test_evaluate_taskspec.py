"""compress.evaluate.taskspec / docs: lm-eval task YAMLs read as lm-eval reads them; every bad
spec or data file a clear error naming the key, file or line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.errors import BadInput
from compress.evaluate.docs import load_docs
from compress.evaluate.taskspec import get_specs, load_specs, parse_spec

#: lm-evaluation-harness's piqa.yaml, verbatim but for the data source (local json files)
LM_EVAL_PIQA = """task: piqa
dataset_path: json
dataset_kwargs:
  data_files:
    validation: piqa_hf.jsonl
output_type: multiple_choice
training_split: train
validation_split: validation
test_split: null
doc_to_text: "Question: {{goal}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{[sol1, sol2]}}"
should_decontaminate: true
doc_to_decontamination_query: goal
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _spec(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_an_lm_eval_yaml_with_local_files_runs_unchanged(tmp_path):
    rows = [{"goal": "g1", "sol1": "a", "sol2": "b", "label": 1}, {"goal": "g2", "sol1": "c",
            "sol2": "d", "label": 0}]  # fmt: skip
    _jsonl(tmp_path / "piqa_hf.jsonl", rows)
    (ls,) = get_specs(["piqa"], [_spec(tmp_path, LM_EVAL_PIQA)])
    data = load_docs(ls.spec, tmp_path)
    assert [(i.context, i.choices, i.gold) for i in data.items] == [
        ("Question: g1\nAnswer:", ["a", "b"], 1),
        ("Question: g2\nAnswer:", ["c", "d"], 0),
    ]
    assert len(data.sha256) == 64 and len(ls.sha256) == 64


def test_nested_fields_letters_fixed_lists_bools_and_a_labels_file(tmp_path):
    arc = {"question": {"stem": "Q?", "choices": [{"text": "x", "label": "A"},
           {"text": "y", "label": "B"}]}, "answerKey": "B"}  # fmt: skip
    _jsonl(tmp_path / "arc.jsonl", [arc])
    spec = parse_spec(
        "task: a\ndataset_path: json\ndataset_kwargs: {data_files: {test: arc.jsonl}}\n"
        "doc_to_text: '{{question.stem}}'\n"
        "doc_to_target: \"{{(question.choices | map(attribute='label') | list)"
        '.index(answerKey)}}"\n'
        "doc_to_choice: \"{{question.choices | map(attribute='text') | list}}\"\n",
        "a.yaml",
    )
    (item,) = load_docs(spec, tmp_path).items
    assert (item.context, item.choices, item.gold) == ("Q?", ["x", "y"], 1)
    _jsonl(tmp_path / "b.jsonl", [{"s": "t", "ok": True}, {"s": "u", "ok": False}])
    spec = parse_spec(
        "task: b\ndataset_path: json\ndataset_kwargs: {data_files: b.jsonl}\n"
        "doc_to_text: s\ndoc_to_target: '{{ok}}'\ndoc_to_choice: ['no', 'yes']\n",
        "b.yaml",
    )
    assert [i.gold for i in load_docs(spec, tmp_path).items] == [1, 0]
    _jsonl(tmp_path / "p.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b"}] * 3)
    (tmp_path / "p-labels.lst").write_text("1\n0\n1\n")
    spec = parse_spec(
        "task: p\ndataset_path: json\ndataset_kwargs: {data_files: p.jsonl}\n"
        "labels_file: p-labels.lst\ndoc_to_text: goal\ndoc_to_target: label\n"
        "doc_to_choice: '{{[sol1, sol2]}}'\n",
        "p.yaml",
    )
    assert [i.gold for i in load_docs(spec, tmp_path).items] == [1, 0, 1]
    assert [i.gold for i in load_docs(spec, tmp_path, limit=2).items] == [1, 0]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("doc_to_txt: x\n", "doc_to_txt: unknown key (did you mean 'doc_to_text'?)"),
        ("process_results: !!str f\n", "compress does not run process_results 'f'"),
        ("process_results: !function my.fn\n", "'!function my.fn' is not a compress built-in"),
        ("metric_list: [{metric: perplexity}]\n", "metric_list.0: 'perplexity' is not computed"),
        ("output_type: embedding_similarity\n", "doc_to_text_pair: required"),
        ("filter_list: []\n", "compress does not run: filter_list"),
        ("process_docs: '!function utils.process'\n", "process_docs must name a built-in"),
        ("num_fewshot: 5\n", "num_fewshot"),
        ("output_type: generate_until\n", "output_type"),
    ],
)
def test_bad_specs_name_the_key(extra, expected):
    base = "task: t\ndataset_path: json\ndoc_to_text: a\ndoc_to_target: 0\ndoc_to_choice: [x]\n"
    with pytest.raises(BadInput) as e:
        parse_spec(base + extra, "t.yaml")
    assert expected in str(e.value) and "t.yaml" in str(e.value)


@pytest.mark.parametrize(
    ("rows", "text", "target", "expected"),
    [
        ('{"a": 1}\n{"a": \n', "a", "0", "line 2: not valid JSON"),
        ('{"a": "x"}\n', "a", "5", "label 5 out of range for 2 choices"),
        ("", "a", "0", "holds no documents"),
        ('{"a": "x"}\n', "'{{nope}}'", "0", "template refers to a missing field"),
        ('{"a": "x"}\n', "a", "'{{a}}'", "neither an index nor one of the choices"),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path, rows, text, target, expected):
    (tmp_path / "d.jsonl").write_text(rows)
    spec = parse_spec(
        f"task: t\ndataset_path: json\ndataset_kwargs: {{data_files: d.jsonl}}\n"
        f"doc_to_text: {text}\ndoc_to_target: {target}\ndoc_to_choice: [p, q]\n",
        "t.yaml",
    )
    with pytest.raises(BadInput, match=expected):
        load_docs(spec, tmp_path)


def test_labels_file_of_the_wrong_length_and_unknown_tasks_are_refused(tmp_path):
    _jsonl(tmp_path / "p.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b"}] * 3)
    (tmp_path / "l.lst").write_text("1\n0\n")
    spec = parse_spec(
        "task: p\ndataset_path: json\ndataset_kwargs: {data_files: p.jsonl}\nlabels_file: l.lst\n"
        "doc_to_text: goal\ndoc_to_target: label\ndoc_to_choice: '{{[sol1, sol2]}}'\n",
        "p.yaml",
    )
    with pytest.raises(BadInput, match="2 labels for 3 documents"):
        load_docs(spec, tmp_path)
    with pytest.raises(BadInput, match="did you mean 'piqa'"):
        get_specs(["pika"])


def test_shipped_specs_parse_and_register_their_metrics():
    from compress.evaluate.taskspec import register_task_metrics
    from compress.metrics import metric_info

    specs = load_specs()
    assert {"piqa", "arc_easy", "hellaswag", "sst2"} <= set(specs)
    register_task_metrics(specs["piqa"].spec)
    assert metric_info("piqa.acc_norm").higher_is_better

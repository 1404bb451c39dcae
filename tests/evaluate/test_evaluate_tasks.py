"""compress.evaluate.tasks / scoring / rolling / embedding / results_cache: every task type on
tiny models with hand-built items, lm-eval YAMLs verbatim, the baseline cache."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compress.errors import BadInput
from compress.evaluate.choice import encode
from compress.evaluate.docs import Item, load_docs
from compress.evaluate.rolling import rolling_requests, windows
from compress.evaluate.scoring import loglikelihoods
from compress.evaluate.tasks import run_task
from compress.evaluate.taskspec import get_specs, parse_spec
from compress.testing import tiny_llama, tiny_tokenizer

TOK = tiny_tokenizer()

#: lm-evaluation-harness's lambada_openai.yaml, verbatim but for the data source
LM_EVAL_LAMBADA = """tag:
  - lambada
task: lambada_openai
dataset_path: json
dataset_kwargs:
  data_files:
    test: lambada.jsonl
output_type: loglikelihood
test_split: test
doc_to_text: "{{text.split(' ')[:-1]|join(' ')}}"
doc_to_target: "{{' '+text.split(' ')[-1]}}"
should_decontaminate: true
doc_to_decontamination_query: "{{text}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

#: lm-eval's wikitext.yaml with its `!function`s, the data from a local text file
LM_EVAL_WIKITEXT = """task: wiki
dataset_path: text
dataset_kwargs:
  data_files:
    test: wiki.raw
process_docs: wikitext_pages
output_type: loglikelihood_rolling
training_split: train
validation_split: validation
test_split: test
doc_to_text: ""
doc_to_target: !function preprocess_wikitext.wikitext_detokenizer
process_results: !function preprocess_wikitext.process_results
should_decontaminate: true
doc_to_decontamination_query: "{{page}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 2.0
"""

#: WinoGrande-style partial scoring in templates (lm-eval does it with !function utils)
WINO = """task: wino
dataset_path: json
dataset_kwargs: {data_files: {validation: wino.jsonl}}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{ {'1': 0, '2': 1}[answer] }}"
doc_to_target: "{{ sentence.split('_')[1].strip() }}"
doc_to_choice: "{{ [sentence.split('_')[0] + option1, sentence.split('_')[0] + option2] }}"
metric_list: [{metric: acc}]
"""


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return folder


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_EVAL_CACHE", str(tmp_path / "eval-cache"))


def _direct_ll(model, context: list[int], cont: list[int]) -> float:
    tokens = context + cont
    with torch.no_grad():
        logits = model(torch.tensor([tokens[:-1]])).logits[0].float()
    lp = F.log_softmax(logits[-len(cont) :], -1)
    return float(lp.gather(1, torch.tensor(cont)[:, None]).sum())


@pytest.mark.parametrize(("n", "limit"), [(1, 4), (4, 4), (5, 4), (11, 4), (9, 1), (30, 7)])
def test_rolling_windows_predict_every_token_once_within_the_limit(n, limit):
    tokens = list(range(100, 100 + n))
    got = windows(tokens, 1, limit)
    predicted = [t for _, pred in got for t in pred]
    assert predicted == tokens
    assert got[0][0] == [1]
    for ctx, pred in got:
        assert 1 <= len(ctx) + len(pred) - 1 <= limit
        if ctx != [1]:  # the context is exactly the tokens before the prediction
            start = tokens.index(pred[0])
            assert ctx == tokens[start - len(ctx) : start]


def test_rolling_text_nll_matches_a_direct_forward_and_windows_sum_up():
    model = tiny_llama(seed=2)
    text = "the quick brown fox jumps over the lazy dog again and again"
    item = [Item(0, "", [], 0, shared_target=text, count_text=text)]
    ids = TOK(text)["input_ids"]
    whole = rolling_requests(TOK, item, 256)
    assert len(whole) == 1
    (ll,) = [x for x, _ in loglikelihoods(model, whole)]
    assert ll == pytest.approx(_direct_ll(model, [1], ids), abs=1e-4)  # prefix = BOS (<s>)
    short = rolling_requests(TOK, item, 16)
    assert len(short) == math.ceil(len(ids) / 16)
    parts = [x for x, _ in loglikelihoods(model, short, batch_size=3)]
    oracle = [_direct_ll(model, list(r.context), list(r.cont)) for r in short]
    assert np.allclose(parts, oracle, atol=1e-4)


def test_wikitext_lm_eval_yaml_runs_with_its_functions(tmp_path):
    raw = " = A = \n \n x @-@ y , z . \n = B = \n \n b 's \n"
    (tmp_path / "wiki.raw").write_text(raw, encoding="utf-8")
    (ls,) = get_specs(["wiki"], [_write(tmp_path / "t", "w.yaml", LM_EVAL_WIKITEXT)])
    items = load_docs(ls.spec, tmp_path).items
    assert [it.count_text for it in items] == [" = A = \n \n x @-@ y , z . ", " = B = \n \n b 's "]
    assert items[0].shared_target == " = A =\n\nx-y, z. "  # lm-eval's detokenizer
    res = run_task(ls, {"model": tiny_llama(seed=1)}, TOK, data_dir=tmp_path, progress=False)
    m = {x["name"]: x for x in res["measurements"]["model"]}
    words = sum(len(re.split(r"\s+", it.count_text)) for it in items)  # lm-eval's count
    nbytes = sum(len(it.count_text.encode()) for it in items)
    nll = math.log(m["wiki.word_perplexity"]["value"]) * words
    assert m["wiki.bits_per_byte"]["value"] == pytest.approx(nll / nbytes / math.log(2), rel=1e-3)
    assert m["wiki.byte_perplexity"]["value"] == pytest.approx(math.exp(nll / nbytes), rel=1e-3)


def test_lambada_lm_eval_yaml_perplexity_and_greedy_accuracy(tmp_path):
    _jsonl(tmp_path / "lambada.jsonl", [{"text": "a b c"}, {"text": "the cat sat"}])
    (ls,) = get_specs(["lambada_openai"], [_write(tmp_path / "t", "l.yaml", LM_EVAL_LAMBADA)])
    model = tiny_llama(seed=4)
    res = run_task(ls, {"model": model}, TOK, data_dir=tmp_path, progress=False)
    items = load_docs(ls.spec, tmp_path).items
    assert [it.shared_target for it in items] == [" c", " sat"]
    reqs = encode(TOK, items, " ")
    assert [len(r.cont) for r in reqs] == [2, 4]  # no delimiter added to loglikelihood targets
    direct = [_direct_ll(model, list(r.context), list(r.cont)) for r in reqs]
    m = {x["name"]: x for x in res["measurements"]["model"]}
    assert m["lambada_openai.perplexity"]["value"] == pytest.approx(math.exp(-np.mean(direct)))
    assert m["lambada_openai.perplexity"]["higher_is_better"] is False


def test_greedy_flag_follows_the_argmax():
    class Fixed(torch.nn.Module):
        def get_decoder(self):
            return lambda input_ids, **kw: SimpleNamespace(
                last_hidden_state=torch.zeros(*input_ids.shape, 1)
            )

        def get_output_embeddings(self):
            row = torch.full((128,), -9.0)
            row[TOK.convert_tokens_to_ids("x")] = 5.0
            return lambda h: row.expand(h.shape[0], -1)

    items = [Item(0, "q", [], 0, shared_target="xx"), Item(1, "q", [], 0, shared_target="xy")]
    res = loglikelihoods(Fixed(), encode(TOK, items, " "))
    assert [g for _, g in res] == [True, False]


def test_partial_scoring_spec_in_templates(tmp_path):
    rows = [{"sentence": "The cup is in the _ now.", "option1": "box", "option2": "bag",
             "answer": "2"}]  # fmt: skip
    _jsonl(tmp_path / "wino.jsonl", rows)
    (ls,) = get_specs(["wino"], [_write(tmp_path / "t", "w.yaml", WINO)])
    (item,) = load_docs(ls.spec, tmp_path).items
    assert item.choices == ["The cup is in the box", "The cup is in the bag"]
    assert (item.gold, item.shared_target) == (1, "now.")
    res = run_task(ls, {"model": tiny_llama()}, TOK, data_dir=tmp_path, progress=False)
    assert res["requests"] == 2 and res["measurements"]["model"][0]["n"] == 1


def test_packing_falls_back_when_a_model_ignores_the_mask(caplog):
    model = tiny_llama(seed=5)
    decoder = model.get_decoder()

    class Blind(torch.nn.Module):  # attention sees everything before it: packing is wrong
        config = model.config

        def get_decoder(self):
            return lambda input_ids, attention_mask=None, position_ids=None, **kw: decoder(
                input_ids=input_ids, **kw
            )

        def get_output_embeddings(self):
            return model.get_output_embeddings()

    items = [Item(0, "abc", ["de", "fgh", "i"], 0)]
    reqs = encode(TOK, items, " ")
    got = [x for x, _ in loglikelihoods(Blind(), reqs)]
    oracle = [_direct_ll(model, list(r.context), list(r.cont)) for r in reqs]
    assert np.allclose(got, oracle, atol=1e-4)
    assert "scoring one sequence per request" in caplog.text


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    return BertModel(cfg).eval()


STS = """task: sts
dataset_path: csv
dataset_kwargs: {data_files: {test: sts.tsv}, delimiter: "\\t", quoting: 3,
                 column_names: [score, s1, s2]}
test_split: test
output_type: embedding_similarity
doc_to_text: s1
doc_to_text_pair: s2
doc_to_target: score
"""


def test_embedding_similarity_is_spearman_of_mean_pooled_cosines(tmp_path):
    from scipy.stats import spearmanr

    lines = ["4.5\tab\tab", "0.2\tqrs\tz", "2.0\tabc\tabd", "3.1\tx y\tx", "1.0\tk\tmnop"]
    (tmp_path / "sts.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (ls,) = get_specs(["sts"], [_write(tmp_path / "t", "s.yaml", STS)])
    bert = _tiny_bert()
    res = run_task(ls, {"base": bert, "same": bert}, TOK, data_dir=tmp_path, progress=False)
    sims = []
    for ln in lines:
        _, a, b = ln.split("\t")
        with torch.no_grad():
            ea, eb = (bert(**TOK(t, return_tensors="pt")).last_hidden_state[0].mean(0)
                      for t in (a, b))  # fmt: skip
        sims.append(float(F.cosine_similarity(ea, eb, dim=0)))
    want = spearmanr(sims, [float(ln.split("\t")[0]) for ln in lines])[0]
    (sp, _) = res["measurements"]["base"]
    assert sp["name"] == "sts.spearman" and sp["value"] == pytest.approx(want, abs=1e-6)
    assert res["paired"]["same"]["sts.spearman"]["delta"] == pytest.approx(0.0, abs=1e-12)


def test_a_task_type_that_does_not_fit_the_model_is_bad_input(tmp_path):
    (tmp_path / "sts.tsv").write_text("1\ta\tb\n", encoding="utf-8")
    (ls,) = get_specs(["sts"], [_write(tmp_path / "t", "s.yaml", STS)])
    with pytest.raises(BadInput, match="needs an encoder"):
        run_task(ls, {"m": tiny_llama()}, TOK, data_dir=tmp_path, progress=False)
    spec = parse_spec(
        "task: mc\ndataset_path: csv\ndataset_kwargs: {data_files: {test: sts.tsv}, delimiter: "
        '"\\t", column_names: [a, b, c]}\ndoc_to_text: b\ndoc_to_target: 0\n'
        "doc_to_choice: '{{[b, c]}}'\n",
        "mc.yaml",
    )
    from compress.evaluate.taskspec import LoadedSpec

    with pytest.raises(BadInput, match="needs a causal"):
        run_task(LoadedSpec(spec=spec, path=Path("mc.yaml"), sha256="0"), {"m": _tiny_bert()},
                 TOK, data_dir=tmp_path, progress=False)  # fmt: skip


def test_the_baseline_is_read_from_the_cache_on_a_rerun_and_missed_after_a_change(tmp_path):
    _jsonl(tmp_path / "lambada.jsonl", [{"text": "a b c"}, {"text": "the cat sat"}])
    (ls,) = get_specs(["lambada_openai"], [_write(tmp_path / "t", "l.yaml", LM_EVAL_LAMBADA)])
    model = tiny_llama(seed=4)
    first = run_task(ls, {"baseline": model}, TOK, data_dir=tmp_path, progress=False)
    again = run_task(ls, {"baseline": model}, TOK, data_dir=tmp_path, progress=False)
    assert first["cached"] == {} and "eval cache" in again["cached"]["baseline"]
    assert again["measurements"] == first["measurements"]
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0  # other weights: another key
    third = run_task(ls, {"baseline": model}, TOK, data_dir=tmp_path, progress=False)
    assert third["cached"] == {}
    off = run_task(ls, {"baseline": model}, TOK, data_dir=tmp_path, progress=False, cache=False)
    assert off["cached"] == {}


def test_ratio_statistics_are_paired_and_seeded():
    from compress.evaluate.item_stats import paired_ratio, ratio_measurement

    rng = np.random.default_rng(0)
    base = rng.gamma(4.0, 1.0, 300)
    comp = base + rng.normal(0.1, 0.05, 300)
    m = ratio_measurement("t.perplexity", "perplexity", list(base), [1.0] * 300, "x", seed=3)
    assert m["value"] == pytest.approx(math.exp(base.mean()))
    assert m["ci95"][0] < m["value"] < m["ci95"][1]
    p = paired_ratio("perplexity", list(base), list(comp), [1.0] * 300, seed=3)
    assert p["ratio"] == pytest.approx(math.exp(comp.mean() - base.mean()))
    assert 1.0 < p["ratio_ci95"][0] < p["ratio"] < p["ratio_ci95"][1]  # paired: tight, > 1
    assert p == paired_ratio("perplexity", list(base), list(comp), [1.0] * 300, seed=3)


def test_choices_that_start_alike_share_their_tokens_and_score_as_alone():
    from compress.evaluate.scoring import make_packs

    model = tiny_llama(seed=6)
    items = [Item(0, "ctx", ["abcdef", "abcxyz", "q"], 0), Item(1, "ctx", ["abcdef"], 0)]
    reqs = encode(TOK, items, " ")
    packs = make_packs(reqs)
    assert [len(p.ids) for p in packs] == [3 + 6 + 2, 3 + 6]  # ' abc' computed once, not 3x
    got = [x for x, _ in loglikelihoods(model, reqs, batch_size=2)]
    oracle = [_direct_ll(model, list(r.context), list(r.cont)) for r in reqs]
    assert np.allclose(got, oracle, atol=1e-4)


def test_a_short_csv_row_names_its_file_and_line(tmp_path):
    (tmp_path / "sts.tsv").write_text("1\ta\tb\n2\tonly-two\n", encoding="utf-8")
    (ls,) = get_specs(["sts"], [_write(tmp_path / "t", "s.yaml", STS)])
    with pytest.raises(BadInput, match=r"sts\.tsv, line 2: 3 columns expected"):
        load_docs(ls.spec, tmp_path)

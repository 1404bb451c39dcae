"""compress.evaluate.choice / item_stats / tasks: answers forced by constructed logits, batch
size 1 == 8, paired statistics with their stated coverage."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.evaluate.choice import encode, item_scores
from compress.evaluate.docs import Item
from compress.evaluate.item_stats import accuracy_measurement, newcombe_paired, paired_accuracy
from compress.evaluate.scoring import loglikelihoods
from compress.testing import tiny_llama, tiny_tokenizer

TOK = tiny_tokenizer()


class Fixed(nn.Module):
    """Next-token logits that ignore the input: the same row at every position."""

    def __init__(self, row: torch.Tensor):
        super().__init__()
        self.row = row

    def get_decoder(self):
        return lambda input_ids, **kw: SimpleNamespace(
            last_hidden_state=torch.zeros(*input_ids.shape, 1)
        )

    def get_output_embeddings(self):
        return lambda hidden: self.row.expand(hidden.shape[0], -1)


def _lls(model, reqs, **kw):
    return [ll for ll, _ in loglikelihoods(model, reqs, **kw)]


def _id(ch: str) -> int:
    return TOK.convert_tokens_to_ids(ch)


def test_acc_acc_norm_and_acc_bytes_follow_the_forced_scores():
    row = torch.full((128,), -20.0)
    row[_id(" ")], row[_id("a")], row[_id("b")] = 8.0, 5.0, 7.0
    lp = F.log_softmax(row, -1)
    items = [Item(0, "q", ["a", "bbbb"], 0), Item(1, "q", ["bbbb", "a"], 0)]
    reqs = encode(TOK, items, " ")
    assert [len(r.cont) for r in reqs] == [2, 5, 5, 2]  # delimiter + choice characters
    lls = _lls(Fixed(row), reqs, batch_size=3)
    sp, la, lb = float(lp[_id(" ")]), float(lp[_id("a")]), float(lp[_id("b")])
    assert lls[0] == pytest.approx(sp + la, abs=1e-5) and lls[1] == pytest.approx(sp + 4 * lb)
    s = item_scores(items, reqs, lls)
    best_raw = 0 if sp + la > sp + 4 * lb else 1
    best_norm = 0 if (sp + la) / 1 > (sp + 4 * lb) / 4 else 1
    assert s["acc"] == [float(best_raw == 0), float(best_raw == 1)]
    assert s["acc_norm"] == [float(best_norm == 0), float(best_norm == 1)]
    assert s["acc_bytes"] == s["acc_norm"]  # ASCII: characters == bytes


def test_trailing_spaces_of_the_context_move_to_the_continuation():
    (r,) = encode(TOK, [Item(0, "ab  ", ["c"], 0)], " ")
    assert r.context == (_id("a"), _id("b"))
    assert r.cont == (_id(" "), _id(" "), _id(" "), _id("c"))


def test_alternative_contexts_share_one_continuation_partial_scoring():
    """lm-eval's multiple_input (WinoGrande): choices are contexts, only the target scores."""
    row = torch.full((128,), -20.0)
    row[_id(" ")], row[_id("x")] = 8.0, 6.0
    items = [Item(0, "", ["long context", "ab"], 1, shared_target="x")]
    reqs = encode(TOK, items, " ")
    assert [r.cont for r in reqs] == [(_id(" "), _id("x"))] * 2
    assert [len(r.context) for r in reqs] == [12, 2]
    s = item_scores(items, reqs, _lls(Fixed(row), reqs))
    assert s["loglikelihoods"][0][0] == pytest.approx(s["loglikelihoods"][0][1])
    # equal scores: the first choice wins (np.argmax), so acc is 0 for gold 1; acc_norm divides
    # by the CONTEXT lengths, as lm-eval does: -x/12 > -x/2, the long context wins again
    assert s["acc"] == [0.0] and s["acc_norm"] == [0.0]
    items = [Item(0, "", ["long context", "ab"], 0, shared_target="x")]
    assert item_scores(items, reqs, _lls(Fixed(row), reqs))["acc_norm"] == [1.0]


def test_results_do_not_depend_on_the_batch_size():
    model = tiny_llama(seed=3)
    rng = np.random.default_rng(0)
    words = ["ab", "cde", "f", "ghij", "klmnop", "qr"]
    items = [
        Item(i, "ctx " * int(rng.integers(1, 6)), [str(rng.choice(words)) for _ in range(3)], 0)
        for i in range(7)
    ]
    reqs = encode(TOK, items, " ")
    one = _lls(model, reqs, batch_size=1)
    eight = _lls(model, reqs, batch_size=8)
    alone = _lls(model, reqs, batch_size=8, share_context=False)
    assert np.allclose(one, eight, rtol=0, atol=1e-4) and np.allclose(one, alone, atol=1e-4)
    direct = []  # an independent oracle: the unpadded full forward of each request
    for r in reqs:
        tokens = list(r.context + r.cont)
        with torch.no_grad():
            logits = model(torch.tensor([tokens[:-1]])).logits
        lp = F.log_softmax(logits[0, -len(r.cont) :].float(), -1)
        direct.append(float(lp.gather(1, torch.tensor(r.cont)[:, None]).sum()))
    assert np.allclose(one, direct, atol=1e-4)


def test_accuracy_interval_is_wilson_and_stderr_is_lm_evals():
    m = accuracy_measurement("t.acc", [1.0] * 7 + [0.0] * 3, "x")
    assert m["value"] == 0.7 and m["n"] == 10
    assert m["stderr"] == pytest.approx(math.sqrt(0.7 * 0.3 / 9))
    assert m["ci95"] == pytest.approx([0.3968, 0.8922], abs=1e-4)  # Wilson, z = 1.96


def test_paired_difference_mcnemar_and_flips():
    base = [1, 1, 1, 0, 0, 1, 0, 1]
    comp = [1, 0, 1, 1, 0, 0, 0, 1]
    p = paired_accuracy(base, comp, seed=1)
    assert p["delta"] == pytest.approx(-1 / 8)
    assert p["flips_lost"] == [1, 5] and p["flips_gained"] == [3]
    assert p["mcnemar_p"] == pytest.approx(1.0)  # 1 vs 2 discordant: exact binomial, two-sided
    assert p["delta_ci95"][0] <= p["delta"] <= p["delta_ci95"][1]
    assert paired_accuracy(base, comp, seed=1) == p  # seeded: the same interval every time


def test_paired_bootstrap_interval_covers_the_true_difference_about_95_percent():
    rng = np.random.default_rng(7)
    hits, sims, n = 0, 200, 300
    for s in range(sims):
        base = rng.random(n) < 0.6
        flip = rng.random(n)
        comp = np.where(flip < 0.1, ~base, base)  # each item flips with probability 0.1
        true = 0.1 * (0.4 - 0.6)  # E[comp - base]
        lo, hi = paired_accuracy(base.astype(float), comp.astype(float), seed=s)["delta_ci95"]
        hits += lo <= true <= hi
    assert 0.90 <= hits / sims <= 0.99, hits / sims


def test_no_flips_gives_a_newcombe_interval_of_nonzero_width():
    same = [1.0] * 60 + [0.0] * 40
    p = paired_accuracy(same, same, seed=0)
    lo, hi = p["delta_ci95"]
    assert lo < 0 < hi and hi - lo > 0.01 and "Newcombe" in p["method"]
    assert p["ratio_ci95"][0] < 1 < p["ratio_ci95"][1]


def test_newcombe_interval_covers_rare_flips_about_95_percent():
    """Where few items change the bootstrap degenerates; the Newcombe interval keeps coverage."""
    rng = np.random.default_rng(11)
    hits, sims, n = 0, 400, 200
    for _ in range(sims):
        base = rng.random(n) < 0.7
        u = rng.random(n)
        comp = np.where(base & (u < 0.02), False, np.where(~base & (u < 0.02), True, base))
        true = 0.02 * 0.3 - 0.02 * 0.7
        lost, gained = int((base & ~comp).sum()), int((~base & comp).sum())
        both = int((base & comp).sum())
        lo, hi = newcombe_paired(both, gained, lost, n)
        hits += lo <= true <= hi
    assert 0.92 <= hits / sims <= 0.995, hits / sims

"""Requests of multiple-choice and loglikelihood tasks, encoded as lm-evaluation-harness
encodes them, and multiple-choice scores per item.

Per (context, choice): continuation = target_delimiter + choice (or, for alternative contexts,
target_delimiter + the shared target); see `encode_pair` for the tokenisation. The score is
the sum of the continuation tokens' log-probabilities (`scoring.loglikelihoods`). Per item:
acc = argmax of the scores is gold; acc_norm divides each score by the choice's length in
characters; acc_bytes by its UTF-8 bytes. Every request is scored by every model the same
way, which is what pairing needs.
"""

from __future__ import annotations

from typing import Any

from compress.evaluate.docs import Item
from compress.evaluate.scoring import Request


def prefix_token(tokenizer: Any) -> int:
    """lm-eval's HF `prefix_token_id`: what an empty context conditions on (BOS, else EOS)."""
    bos = tokenizer.bos_token_id
    return bos if bos is not None else tokenizer.eos_token_id


def encode_pair(
    tokenizer: Any, context: str, continuation: str, prefix: int, max_length: int | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(context ids, continuation ids) as lm-eval's causal HF backend encodes a request:
    trailing spaces of the context move to the continuation; the continuation is what
    tokenize(context + continuation) adds after tokenize(context) (the tokenizer's own special
    tokens, e.g. gemma's BOS); an empty context becomes the prefix token; the whole is cut
    from the left to `max_length` + 1 tokens."""
    if context == "":
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        head, cont = ([prefix], cont) if cont[:1] != [prefix] else (cont[:1], cont[1:])
    else:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = tokenizer(context + continuation)["input_ids"]
        head = tokenizer(context)["input_ids"]
        cont = whole[len(head) :]
    if not cont:
        raise ValueError(f"continuation {continuation!r} encodes to no tokens")
    if max_length and len(head) + len(cont) > max_length + 1:
        keep = max(max_length + 1 - len(cont), 1)
        head = head[-keep:]
    return tuple(head), tuple(cont)


def encode(
    tokenizer: Any, items: list[Item], delimiter: str, max_length: int | None = None
) -> list[Request]:
    """Every (item, choice) request of a multiple-choice or loglikelihood task. Choices are
    continuations of the context; with `shared_target` they are alternative contexts for that
    one continuation (partial scoring); a loglikelihood item is one request."""
    prefix = prefix_token(tokenizer)
    out = []
    for it in items:
        if not it.choices:  # loglikelihood: the target as it is (lm-eval adds no delimiter)
            pairs = [(it.context, it.shared_target or "")]
        elif it.shared_target is not None:
            pairs = [(c, delimiter + it.shared_target) for c in it.choices]
        else:
            pairs = [(it.context, delimiter + c) for c in it.choices]
        for j, (ctx, cont) in enumerate(pairs):
            head, tail = encode_pair(tokenizer, ctx, cont, prefix, max_length)
            out.append(Request(it.index, j, head, tail))
    return out


def item_scores(items: list[Item], requests: list[Request], lls: list[float]) -> dict:
    """Per item: 1/0 correctness for acc, acc_norm, acc_bytes, and the choice scores. As in
    lm-eval, acc_norm and acc_bytes divide by the length of each choice (for alternative
    contexts that is the context's length)."""
    by_item: dict[int, list[float]] = {it.index: [0.0] * len(it.choices) for it in items}
    for r, ll in zip(requests, lls, strict=True):
        by_item[r.item][r.choice] = ll
    out: dict[str, list] = {"acc": [], "acc_norm": [], "acc_bytes": [], "loglikelihoods": []}
    for it in items:
        s = by_item[it.index]
        chars = [s[j] / max(len(c), 1) for j, c in enumerate(it.choices)]
        nbytes = [s[j] / max(len(c.encode("utf-8")), 1) for j, c in enumerate(it.choices)]
        out["acc"].append(float(_argmax(s) == it.gold))
        out["acc_norm"].append(float(_argmax(chars) == it.gold))
        out["acc_bytes"].append(float(_argmax(nbytes) == it.gold))
        out["loglikelihoods"].append(s)
    return out


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda j: (xs[j], -j))  # ties: the first, like np.argmax

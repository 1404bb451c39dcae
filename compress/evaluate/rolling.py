"""Whole-text log-likelihood in rolling windows (lm-eval's `loglikelihood_rolling`).

A text's tokens are predicted window by window, each token exactly once: the first window
conditions on the prefix token and predicts the first `max_length` tokens; every later window
predicts the next up to `max_length` tokens with the tokens before them as context, the input
never longer than `max_length` (lm-eval's `get_rolling_token_windows` with context_len 1 and
`make_disjoint_window`). The windows are ordinary requests, scored by `scoring`.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from compress.evaluate.choice import prefix_token
from compress.evaluate.docs import Item
from compress.evaluate.scoring import Request

_DEFAULT_MAX_LENGTH = 2048
_TOKENIZER_INFINITY = 1000000000000000019884624838656


def resolve_max_length(model: nn.Module, tokenizer: Any, override: int | None = None) -> int:
    """lm-eval's HF rule: the override, else the config's n_positions /
    max_position_embeddings / n_ctx (text_config first), else the tokenizer's
    model_max_length when set, else 2048."""
    if override:
        return int(override)
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit != _TOKENIZER_INFINITY:
        return int(limit)
    return _DEFAULT_MAX_LENGTH


def windows(tokens: list[int], prefix: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(context, predicted tokens) per window; the contexts do not overlap the predictions."""
    if not tokens:
        return []
    first = min(max_length, len(tokens))
    out = [([prefix], tokens[:first])]
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, max_length)
        end = done + n
        inp = tokens[end - max_length - 1 : end - 1]
        out.append((inp[: len(inp) - (n - 1)], tokens[end - n : end]))
        done = end
    return out


def rolling_requests(tokenizer: Any, items: list[Item], max_length: int) -> list[Request]:
    """Every window of every item's text as a request (choice = window number)."""
    prefix = prefix_token(tokenizer)
    out = []
    for it in items:
        tokens = tokenizer(it.shared_target or "")["input_ids"]
        for k, (ctx, pred) in enumerate(windows(tokens, prefix, max_length)):
            out.append(Request(it.index, k, tuple(ctx), tuple(pred)))
    return out


def document_nll(items: list[Item], requests: list[Request], lls: list[float]) -> list[float]:
    """Per item: the negative log-likelihood of its whole text (sum over its windows)."""
    total = dict.fromkeys((it.index for it in items), 0.0)
    for r, ll in zip(requests, lls, strict=True):
        total[r.item] -= ll
    return [total[it.index] for it in items]


def counts(items: list[Item]) -> dict[str, list[float]]:
    """Words (lm-eval's whitespace split) and UTF-8 bytes of each item's counted text."""
    return {
        "words": [float(len(re.split(r"\s+", it.count_text))) for it in items],
        "bytes": [float(len(it.count_text.encode("utf-8"))) for it in items],
    }

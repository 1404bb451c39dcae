"""Perplexity the way `llama-perplexity` computes it, so a number from our llama.cpp runtime
can be checked against llama.cpp's own tool on the same file.

llama-perplexity's protocol (tools/perplexity/perplexity.cpp, default settings): tokenize the
whole raw text with the model's own tokenizer (BOS added when the vocabulary adds one), cut
it into consecutive chunks of n_ctx tokens (the remainder is dropped), set the first token of
each chunk to BOS, and score only the second half of each chunk: the logits at positions
n_ctx/2 .. n_ctx-2 predict tokens n_ctx/2+1 .. n_ctx-1. The perplexity is exp of the mean
NLL over all scored tokens. This differs from our own protocol (non-overlapping windows,
every token scored) on purpose: it is llama.cpp's, to compare with llama.cpp.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def chunk_scores(logits: np.ndarray, chunk: list[int], first: int) -> tuple[float, int]:
    """Summed NLL and count of one chunk's scored tokens (positions first .. n-2 predicting
    first+1 .. n-1), with a float64 log-softmax like llama.cpp's."""
    rows = logits[first : len(chunk) - 1].astype(np.float64)
    targets = np.asarray(chunk[first + 1 :])
    top = rows.max(axis=1, keepdims=True)
    logsum = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
    nll = logsum - rows[np.arange(len(targets)), targets]
    return float(nll.sum()), len(targets)


def llamacpp_perplexity(model: Any, text: str, n_ctx: int = 2048, n_chunks: int = -1) -> dict:
    """Perplexity of a `LlamaCppCausalLM` on `text` with llama-perplexity's protocol."""
    import torch

    llm = model.llm
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    bos = llm.token_bos()
    available = len(tokens) // n_ctx
    n = available if n_chunks < 0 else min(n_chunks, available)
    if n < 1:
        raise ValueError(f"the text has {len(tokens)} tokens: fewer than one chunk of {n_ctx}")
    first = n_ctx // 2
    total, count, per_chunk = 0.0, 0, []
    for i in range(n):
        chunk = list(tokens[i * n_ctx : (i + 1) * n_ctx])
        chunk[0] = bos
        logits = model(torch.tensor([chunk])).logits[0].numpy()
        nll, k = chunk_scores(logits, chunk, first)
        total, count = total + nll, count + k
        per_chunk.append(math.exp(total / count))  # llama-perplexity prints the running value
    return {
        "perplexity": math.exp(total / count),
        "chunks": n,
        "n_ctx": n_ctx,
        "scored_tokens": count,
        "tokens": len(tokens),
        "running": per_chunk,
    }

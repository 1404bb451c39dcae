"""Multiple choice by log-likelihood, as lm-evaluation-harness scores it.

Per (context, choice): continuation = target_delimiter + choice; trailing spaces of the
context move to the continuation; the continuation's tokens are those of
tokenize(context + continuation) after tokenize(context) (no special tokens; gemma models get
their BOS first, as lm-eval's HF backend does). The score is the sum of the continuation
tokens' log-probabilities. Per item: acc = argmax of the scores is gold; acc_norm divides
each score by the choice's length in characters; acc_bytes by its UTF-8 bytes.

Requests are batched (sorted by length, right-padded, attention-masked), so results do not
depend on the batch size beyond float noise; every request is scored by every model the
same way, which is what pairing needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.evaluate.docs import Item


@dataclass(frozen=True)
class Request:
    item: int  # index into the items
    choice: int
    tokens: list[int]  # context + continuation tokens, the model input is tokens[:-1]
    n_cont: int  # the last n_cont tokens are the continuation


def encode(tokenizer: Any, items: list[Item], delimiter: str, bos: int | None) -> list[Request]:
    """Every (item, choice) as token ids, split into context and continuation as lm-eval does."""
    out = []
    for it in items:
        context = it.context
        for j, choice in enumerate(it.choices):
            cont = delimiter + choice
            n_spaces = len(context) - len(context.rstrip())
            ctx = context[: len(context) - n_spaces] if n_spaces else context
            cont = context[len(ctx) :] + cont
            whole = tokenizer(ctx + cont, add_special_tokens=False)["input_ids"]
            head = tokenizer(ctx, add_special_tokens=False)["input_ids"] if ctx else []
            cont_ids = whole[len(head) :]
            prefix = [bos] if bos is not None else []
            if not head and not prefix:  # empty context: condition on the end-of-text token
                prefix = [tokenizer.eos_token_id]
            out.append(Request(it.index, j, prefix + head + cont_ids, len(cont_ids)))
    return out


@torch.inference_mode()
def loglikelihoods(
    model: nn.Module,
    requests: list[Request],
    *,
    batch_size: int = 8,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> list[float]:
    """Sum of continuation log-probabilities per request (in the requests' order)."""
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].tokens))
    out = [0.0] * len(requests)
    for s in range(0, len(order), batch_size):
        batch = [requests[i] for i in order[s : s + batch_size]]
        width = max(len(r.tokens) - 1 for r in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for b, r in enumerate(batch):
            n = len(r.tokens) - 1
            ids[b, :n] = torch.tensor(r.tokens[:-1])
            mask[b, :n] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        for b, r in enumerate(batch):
            n = len(r.tokens) - 1
            lp = F.log_softmax(logits[b, n - r.n_cont : n], dim=-1)
            target = torch.tensor(r.tokens[-r.n_cont :], device=lp.device)
            out[order[s + b]] = float(lp.gather(1, target[:, None]).sum())
        if progress:
            progress(len(batch))
    return out


def item_scores(items: list[Item], requests: list[Request], lls: list[float]) -> dict:
    """Per item: 1/0 correctness for acc, acc_norm, acc_bytes, and the choice scores."""
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

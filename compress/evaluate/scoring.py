"""Log-likelihoods of continuations, batched, with each shared context computed once.

A request is (context tokens, continuation tokens). Requests of one item that share their
context (the choices of a multiple-choice question) are packed into ONE sequence: the context,
then the continuations after it as a token tree (choices that begin with the same tokens share
those nodes), each token at the position it has in its own sequence and masked so that it sees
only its own ancestors (a 4-D attention mask). So the context, and any common start of the
choices, is computed once instead of once per choice, and the scores are those of separate
forwards up to float noise. The first packed
sequence of a run is checked against separate forwards; a model whose attention ignores the
mask falls back to one sequence per request (logged).

Only the positions that predict continuation tokens go through the output head and the
log-softmax, in chunks, so memory stays at a chunk x vocabulary however long the inputs are.
Sequences are sorted by length (little padding) and right-padded; results do not depend on the
batch size beyond float noise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

_HEAD_CHUNK = 2048  # positions per output-head chunk
_ATTN_BUDGET = 1 << 26  # rows x width^2 per batch: bounds the attention scores' memory


@dataclass(frozen=True)
class Request:
    item: int  # index into the items
    choice: int
    context: tuple[int, ...]  # never empty (a prefix token stands in for an empty context)
    cont: tuple[int, ...]  # never empty


@dataclass
class _Pack:
    """One model input: a context and the continuations after it, as a token tree."""

    ids: list[int] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)  # index of the token before (-1: none)
    members: list[int] = field(default_factory=list)  # request indices
    reads: list[list[int]] = field(default_factory=list)  # per member: positions predicting it


def _pack(requests: list[Request], members: list[int]) -> _Pack:
    """The shared context, then the members' continuations merged into a tree: tokens that
    continue the same prefix the same way are one node (choices that start alike are computed
    once), each node at the position it has in its own sequence."""
    ctx = requests[members[0]].context
    n0 = len(ctx)
    p = _Pack(ids=list(ctx), pos=list(range(n0)), parent=list(range(-1, n0 - 1)), members=members)
    nodes: dict[tuple[int, int], int] = {}
    for m in members:
        node, reads = n0 - 1, [n0 - 1]
        for k, tok in enumerate(requests[m].cont[:-1]):
            if (node, tok) not in nodes:
                p.ids.append(tok)
                p.pos.append(n0 + k)
                p.parent.append(node)
                nodes[(node, tok)] = len(p.ids) - 1
            node = nodes[(node, tok)]
            reads.append(node)
        p.reads.append(reads)
    return p


def _tree_mask(p: _Pack, width: int) -> torch.Tensor:
    """[width, width] bool: each token sees itself and its ancestors; padding sees itself."""
    mask = np.eye(width, dtype=bool)
    for q, parent in enumerate(p.parent):
        if parent >= 0:
            mask[q] |= mask[parent]
    return torch.from_numpy(mask)


def make_packs(requests: list[Request], share: bool = True) -> list[_Pack]:
    """Requests grouped by (item, context) when `share`, else one pack per request."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        key = (r.item, r.context) if share else (i,)
        groups.setdefault(key, []).append(i)
    return [_pack(requests, ms) for ms in groups.values()]


def _batches(packs: list[_Pack], batch_size: int) -> list[list[_Pack]]:
    order = sorted(packs, key=lambda p: -len(p.ids))
    out: list[list[_Pack]] = []
    for p in order:
        cur = out[-1] if out else None
        width = len(cur[0].ids) if cur else 0  # the first (longest) sets the width
        if cur and len(cur) < batch_size and (len(cur) + 1) * width * width <= _ATTN_BUDGET:
            cur.append(p)
        else:
            out.append([p])
    return out


def _inputs(batch: list[_Pack], device: str) -> dict[str, torch.Tensor]:
    width = len(batch[0].ids)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    pos = torch.zeros(len(batch), width, dtype=torch.long)
    packed = any(len(p.members) > 1 for p in batch)
    mask = torch.zeros(len(batch), 1, width, width, dtype=torch.bool) if packed else None
    flat = torch.zeros(len(batch), width, dtype=torch.long)
    for b, p in enumerate(batch):
        n = len(p.ids)
        ids[b, :n] = torch.tensor(p.ids)
        pos[b, :n] = torch.tensor(p.pos)
        flat[b, :n] = 1
        if mask is not None:
            mask[b, 0] = _tree_mask(p, width)
    out = {"input_ids": ids.to(device), "position_ids": pos.to(device)}
    out["attention_mask"] = (mask if mask is not None else flat).to(device)
    return out


def _softcap(model: nn.Module) -> float | None:
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    return getattr(cfg, "final_logit_softcapping", None)


@torch.inference_mode()
def _score_batch(model: nn.Module, batch: list[_Pack], requests: list[Request], device: str):
    """(log-likelihood, greedy) per member of every pack in the batch."""
    hidden = model.get_decoder()(**_inputs(batch, device), use_cache=False).last_hidden_state
    head, cap = model.get_output_embeddings(), _softcap(model)
    rows, cols, targets, owner = [], [], [], []
    for b, p in enumerate(batch):
        for m, reads in zip(p.members, p.reads, strict=True):
            rows += [b] * len(reads)
            cols += reads
            targets += requests[m].cont
            owner += [m] * len(reads)
    rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
    target_t = torch.tensor(targets, device=device)
    tok_lp, hit = [], []
    for s in range(0, len(rows), _HEAD_CHUNK):
        logits = head(hidden[rows_t[s : s + _HEAD_CHUNK], cols_t[s : s + _HEAD_CHUNK]]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        lp = F.log_softmax(logits, dim=-1)
        t = target_t[s : s + _HEAD_CHUNK]
        tok_lp.append(lp.gather(1, t[:, None])[:, 0].double().cpu())
        hit.append((lp.argmax(-1) == t).cpu())
    lps, hits = torch.cat(tok_lp), torch.cat(hit)
    out: dict[int, tuple[float, bool]] = {}
    start = 0
    for p in batch:
        for m, reads in zip(p.members, p.reads, strict=True):
            seg = slice(start, start + len(reads))
            out[m] = (float(lps[seg].sum()), bool(hits[seg].all()))
            start += len(reads)
    return out


def _packing_holds(model: nn.Module, packs: list[_Pack], requests: list[Request], dev: str):
    """Whether the first multi-member pack scores as its members' separate sequences do."""
    first = next((p for p in packs if len(p.members) > 1), None)
    if first is None:
        return True
    packed = _score_batch(model, [first], requests, dev)
    alone = [_pack(requests, [m]) for m in first.members]
    dtype = next((t.dtype for t in model.parameters() if t.is_floating_point()), torch.float32)
    atol, rtol = (1e-3, 1e-4) if dtype == torch.float32 else (5e-2, 5e-3)  # float noise
    for m, single in zip(first.members, alone, strict=True):
        ll = _score_batch(model, [single], requests, dev)[m][0]
        if abs(ll - packed[m][0]) > atol + rtol * abs(ll):
            log.warning(
                "%s: scores with a shared context differ from separate ones (%.4f vs %.4f); "
                "scoring one sequence per request instead",
                type(model).__name__, packed[m][0], ll,
            )  # fmt: skip
            return False
    return True


def _can_pack(model: nn.Module) -> bool:
    return callable(getattr(model, "get_decoder", None)) and callable(
        getattr(model, "get_output_embeddings", None)
    )


def loglikelihoods(
    model: nn.Module,
    requests: list[Request],
    *,
    batch_size: int = 8,
    device: str = "cpu",
    share_context: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float, bool]]:
    """(sum of continuation log-probabilities, whether the continuation is the greedy one)
    per request, in the requests' order. `batch_size` = model input sequences per forward."""
    if not _can_pack(model):
        raise TypeError(f"{type(model).__name__} has no decoder / output head to score with")
    packs = make_packs(requests, share_context)
    if share_context and not _packing_holds(model, packs, requests, device):
        packs = make_packs(requests, share=False)
    out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
    for batch in _batches(packs, batch_size):
        for m, res in _score_batch(model, batch, requests, device).items():
            out[m] = res
        if progress:
            progress(sum(len(p.members) for p in batch))
    return out

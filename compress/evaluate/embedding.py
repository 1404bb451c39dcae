"""Embedding similarity (STS-B style) for encoder models, as sentence-transformers scores it.

Each text is encoded (truncated to the model's sentence-transformers `max_seq_length` when its
folder says, else the tokenizer's limit, at most 512), its token states mean-pooled over the
attention mask and L2-normalised; a pair's score is the cosine of its two embeddings. The task
metric is the Spearman (or Pearson) correlation of those cosines with the gold scores over all
pairs; intervals by seeded bootstrap over pairs, paired for baseline vs variant.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.evaluate.item_stats import BOOTSTRAP_RESAMPLES

_MAX = 512


def max_seq_length(tokenizer: Any) -> int:
    """sentence-transformers' max_seq_length from the model folder, else the tokenizer's."""
    cfg = Path(str(getattr(tokenizer, "name_or_path", ""))) / "sentence_bert_config.json"
    if cfg.is_file():
        value = json.loads(cfg.read_text(encoding="utf-8")).get("max_seq_length")
        if value:
            return int(value)
    return min(int(getattr(tokenizer, "model_max_length", _MAX) or _MAX), _MAX)


@torch.inference_mode()
def embed(
    model: nn.Module,
    tokenizer: Any,
    texts: list[str],
    *,
    batch_size: int = 32,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """[len(texts), dim] L2-normalised mean-pooled embeddings (length-sorted batches)."""
    limit = max_seq_length(tokenizer)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    parts: dict[int, torch.Tensor] = {}
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=limit,
            return_tensors="pt",
        )  # fmt: skip
        enc = {k: v.to(device) for k, v in enc.items()}
        states = model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"][..., None].float()
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        for i, row in zip(idx, F.normalize(pooled, dim=-1).cpu(), strict=True):
            parts[i] = row
        if progress:
            progress(len(idx))
    return torch.stack([parts[i] for i in range(len(texts))]) if texts else torch.empty(0)


def cosines(model: nn.Module, tokenizer: Any, a: list[str], b: list[str], **kw: Any) -> list[float]:
    """The cosine similarity of each (a[i], b[i]) pair's embeddings."""
    ea = embed(model, tokenizer, a, **kw)
    eb = embed(model, tokenizer, b, **kw)
    return (ea * eb).sum(-1).double().tolist()


def _corr(metric: str, x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import pearsonr, spearmanr

    return float((spearmanr if metric == "spearman" else pearsonr)(x, y)[0])


def _boot(metric: str, x: np.ndarray, gold: np.ndarray, idx: np.ndarray) -> np.ndarray:
    if metric == "spearman":  # Pearson of ranks within each resample
        from scipy.stats import rankdata

        x, gold = rankdata(x[idx], axis=1), rankdata(gold[idx], axis=1)
    else:
        x, gold = x[idx], gold[idx]
    x = x - x.mean(1, keepdims=True)
    gold = gold - gold.mean(1, keepdims=True)
    return (x * gold).sum(1) / np.sqrt((x * x).sum(1) * (gold * gold).sum(1))


def correlation_measurement(
    name: str, metric: str, sims: list[float], gold: list[float], method: str, seed: int = 0
) -> dict[str, Any]:
    """Spearman / Pearson of similarities with gold scores, bootstrap interval over pairs."""
    x, g = np.asarray(sims), np.asarray(gold)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(BOOTSTRAP_RESAMPLES, x.size))
    boots = _boot(metric, x, g, idx)
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return {
        "name": name, "value": _corr(metric, x, g), "unit": "correlation",
        "higher_is_better": True, "n": int(x.size), "stderr": float(np.nanstd(boots, ddof=1)),
        "ci95": [float(lo), float(hi)], "samples": [], "status": "measured",
        "method": f"{method}; 95% CI and stderr: bootstrap over the {x.size} pairs "
        f"({BOOTSTRAP_RESAMPLES} resamples, seed {seed})",
        "reason": None,
    }  # fmt: skip


def paired_correlation(
    metric: str, base: list[float], comp: list[float], gold: list[float], seed: int = 0
) -> dict[str, Any]:
    """Variant minus baseline correlation on the same pairs: paired bootstrap intervals."""
    b, c, g = np.asarray(base), np.asarray(comp), np.asarray(gold)
    vb, vc = _corr(metric, b, g), _corr(metric, c, g)
    idx = np.random.default_rng(seed).integers(0, b.size, size=(BOOTSTRAP_RESAMPLES, b.size))
    bb, bc = _boot(metric, b, g, idx), _boot(metric, c, g, idx)
    d_lo, d_hi = np.nanpercentile(bc - bb, [2.5, 97.5])
    r_lo, r_hi = np.nanpercentile(bc / bb, [2.5, 97.5])
    return {
        "delta": vc - vb, "delta_ci95": [float(d_lo), float(d_hi)],
        "ratio": vc / vb if vb else None, "ratio_ci95": [float(r_lo), float(r_hi)],
        "n": int(b.size),
        "method": f"paired bootstrap over the {b.size} pairs ({BOOTSTRAP_RESAMPLES} resamples, "
        f"seed {seed}, percentile intervals)",
    }  # fmt: skip

"""Perplexity and KL divergence, baseline and compressed scored window by window in lockstep.

Each window's baseline logits are computed once and used twice: for the baseline's own NLL
and as the reference distribution of KL(baseline || compressed). No logits are kept after
their window, so memory stays at one window of logits per model; each window leaves only its
per-token KL (float32) and top-1 match (bool) arrays, for the token-level divergence figures
of `divergence.py` (percentiles, maximum, same top-1, as llama.cpp reports them).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress import stats
from compress.errors import BadInput, ReleaseFailed
from compress.evaluate import divergence

log = logging.getLogger(__name__)


@torch.inference_mode()
def _window_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids[None], use_cache=False).logits[0, :-1].float()


def window_scores(
    base_logits: torch.Tensor, comp_logits: torch.Tensor, targets: torch.Tensor
) -> dict[str, float]:
    """One window: the compressed model's mean NLL, mean KL(base||comp), top-1 agreement."""
    kl, same = divergence.token_divergence(base_logits, comp_logits)
    return _window_means(float(F.cross_entropy(comp_logits, targets)), kl, same)


def _window_means(nll: float, kl: np.ndarray, same: np.ndarray) -> dict[str, float]:
    return {"nll_comp": nll, "kld": float(kl.mean(dtype=np.float64)), "top1": float(same.mean())}


def evaluate_perplexity(
    baseline: nn.Module, compressed: nn.Module | None, windows: torch.Tensor, **options: Any
) -> dict:
    """Score `windows` [n, seq_len] with both models (`options`: those of `evaluate_many`).
    Returns measurements per side plus the per-window numbers the paired comparisons need."""
    variants = {"compressed": compressed} if compressed is not None else {}
    many = evaluate_many(baseline, variants, windows, **options)
    one = many["variants"].get("compressed", {"measurements": [], "per_window": {}})
    per = {"nll_base": many["baseline_per_window"], **one["per_window"]}
    return {
        "baseline": many["baseline"],
        "compressed": one["measurements"],
        "per_window": per,
        "windows": many["windows"],
        "seq_len": many["seq_len"],
        "tokens_scored": many["tokens_scored"],
        "seconds": {
            "base": many["seconds"]["baseline"],
            "comp": many["seconds"].get("compressed", 0.0),
        },
    }


def evaluate_many(
    baseline: nn.Module,
    variants: dict[str, nn.Module],
    windows: torch.Tensor,
    *,
    device: str = "cpu",
    kld: bool = True,
    progress: bool = True,
    name: str = "wikitext2",
    seed: int = 0,
) -> dict:
    """Score the baseline and every variant on the same windows in one pass: each window's
    baseline logits are computed once and compared with every variant's. With `kld`, each
    window also leaves per-token KL and top-1 arrays (`per_token`), summarised into the
    token-level divergence figures (bootstrap over windows seeded with `seed`)."""
    from compress.progress import tqdm

    base_nll: list[float] = []
    per: dict[str, dict[str, list[float]]] = {k: {} for k in variants}
    tok: dict[str, dict[str, list[np.ndarray]]] = {k: {"kld": [], "top1": []} for k in variants}
    secs = dict.fromkeys(["baseline", *variants], 0.0)
    for j, ids in enumerate(
        tqdm(windows, desc=f"{name} windows", unit="win", disable=not progress)
    ):
        ids = ids.to(device)
        t0 = time.perf_counter()
        lb = _window_logits(baseline, ids)
        secs["baseline"] += time.perf_counter() - t0
        base_nll.append(_finite_baseline(float(F.cross_entropy(lb, ids[1:])), name, j))
        for label, model in variants.items():
            t0 = time.perf_counter()
            lc = _window_logits(model, ids)
            secs[label] += time.perf_counter() - t0
            nll = float(F.cross_entropy(lc, ids[1:]))
            if kld:
                kl, same = divergence.token_divergence(lb, lc)
                scores = _window_means(nll, kl, same)
                tok[label]["kld"].append(kl)
                tok[label]["top1"].append(same)
            else:
                scores = {"nll_comp": nll}
            _check_finite(scores, name, label, j)
            for k, v in scores.items():
                per[label].setdefault(k, []).append(v)
            del lc
        del lb
    n_windows, seq_len = windows.shape
    tokens = n_windows * (seq_len - 1)
    out_variants = {}
    for label, pw in per.items():
        ms = _nll_measurements(name, pw["nll_comp"], tokens)
        one = {"per_window": pw}
        if kld:
            ms += _divergence_measurements(pw, tokens)
            ms += divergence.token_measurements(tok[label]["kld"], tok[label]["top1"], seed=seed)
            one["per_token"] = tok[label]
        out_variants[label] = {"measurements": ms, **one}
    return {
        "baseline": _nll_measurements(name, base_nll, tokens),
        "baseline_per_window": base_nll,
        "variants": out_variants,
        "windows": n_windows,
        "seq_len": seq_len,
        "tokens_scored": tokens,
        "seconds": secs,
    }


def _check_finite(scores: dict[str, float], name: str, label: str, window: int) -> None:
    for k, v in scores.items():
        if not math.isfinite(v):
            raise ReleaseFailed(
                f"{name}: the {label} model gives a non-finite {k} ({v}) on window "
                f"{window}: its outputs hold NaN/inf, so it cannot be released.",
                stage=f"evaluate: {label}",
            )


def _finite_baseline(nll: float, name: str, window: int) -> float:
    if not math.isfinite(nll):
        raise BadInput(
            f"{name}: the baseline model gives a non-finite NLL ({nll}) on window {window}: "
            "the model named by `model:` outputs NaN/inf before any compression, so there is "
            "nothing to compare against.",
            fix="Check the model's weight files.",
            stage="evaluate: baseline",
        )
    return nll


def _divergence_measurements(pw: dict[str, list[float]], tokens: int) -> list[dict]:
    return [
        stats.mean_measurement(
            "kld.mean",
            pw["kld"],
            "nats/token",
            False,
            "per-window mean of the per-token KL(baseline || compressed); "
            f"n = windows ({tokens} tokens)",
        ),
        stats.mean_measurement(
            "kld.top1_agreement",
            pw["top1"],
            "fraction",
            True,
            "per-window share of positions whose argmax matches the baseline's; "
            f"n = windows ({tokens} tokens)",
        ),
    ]


def _nll_measurements(name: str, nll: list[float], tokens: int) -> list[dict]:
    nll_m = stats.mean_measurement(
        f"{name}.nll",
        nll,
        "nats/token",
        False,
        f"mean token negative log-likelihood; n = windows ({tokens} tokens)",
    )
    ci = nll_m["ci95"]
    ppl = math.exp(nll_m["value"])
    ppl_m = dict(
        nll_m,
        name=f"{name}.perplexity",
        value=ppl,
        unit="perplexity",
        stderr=ppl * nll_m["stderr"] if nll_m["stderr"] is not None else None,
        ci95=[math.exp(ci[0]), math.exp(ci[1])] if ci else None,
        samples=[math.exp(x) for x in nll],
        method="exp(mean token NLL); interval = exp(t-interval of the mean window NLL); "
        f"n = windows ({tokens} tokens)",
    )
    return [ppl_m, nll_m]

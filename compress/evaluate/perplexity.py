"""Perplexity and KL divergence, baseline and compressed scored window by window in lockstep.

Each window's baseline logits are computed once and used twice: for the baseline's own NLL
and as the reference distribution of KL(baseline || compressed). Nothing window-sized is
kept after its window, so memory stays at one window of logits per model.
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn.functional as F

from compress import stats

log = logging.getLogger(__name__)

_CHUNK = 512  # positions per KL chunk: bounds the extra memory to a few chunk x vocab tensors


@torch.inference_mode()
def _window_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids[None], use_cache=False).logits[0, :-1].float()


def window_scores(base_logits: torch.Tensor, comp_logits: torch.Tensor | None, targets):
    """Per-window mean NLL of each model, mean KL(base||comp) and top-1 agreement."""
    out = {"nll_base": float(F.cross_entropy(base_logits, targets))}
    if comp_logits is None:
        return out
    out["nll_comp"] = float(F.cross_entropy(comp_logits, targets))
    kl_sum, agree = 0.0, 0
    for s in range(0, base_logits.shape[0], _CHUNK):
        lb = F.log_softmax(base_logits[s : s + _CHUNK], -1)
        lc = F.log_softmax(comp_logits[s : s + _CHUNK], -1)
        kl_sum += float(F.kl_div(lc, lb, log_target=True, reduction="sum"))
        agree += int((lb.argmax(-1) == lc.argmax(-1)).sum())
    n = base_logits.shape[0]
    out["kld"] = kl_sum / n
    out["top1"] = agree / n
    return out


def evaluate_perplexity(
    baseline,
    compressed,
    windows: torch.Tensor,
    *,
    device: str = "cpu",
    kld: bool = True,
    progress: bool = True,
    name: str = "wikitext2",
) -> dict:
    """Score `windows` [n, seq_len] with both models. Returns measurements per side plus the
    per-window numbers the paired comparisons need."""
    from tqdm.auto import tqdm

    per: dict[str, list[float]] = {}
    times = {"base": 0.0, "comp": 0.0}
    for ids in tqdm(windows, desc=f"{name} windows", unit="win", disable=not progress):
        ids = ids.to(device)
        t0 = time.perf_counter()
        lb = _window_logits(baseline, ids)
        t1 = time.perf_counter()
        lc = _window_logits(compressed, ids) if compressed is not None else None
        t2 = time.perf_counter()
        times["base"] += t1 - t0
        times["comp"] += t2 - t1
        scores = window_scores(lb, lc, ids[1:])
        if not kld:
            scores.pop("kld", None)
            scores.pop("top1", None)
        for k, v in scores.items():
            if not math.isfinite(v):
                raise FloatingPointError(f"{name}: non-finite {k} in a window")
            per.setdefault(k, []).append(v)
        del lb, lc
    n_windows, seq_len = windows.shape
    tokens = n_windows * (seq_len - 1)
    result = {
        "baseline": _nll_measurements(name, per["nll_base"], tokens),
        "compressed": _nll_measurements(name, per["nll_comp"], tokens) if "nll_comp" in per else [],
        "per_window": per,
        "windows": n_windows,
        "seq_len": seq_len,
        "tokens_scored": tokens,
        "seconds": times,
    }
    if "kld" in per:
        result["compressed"] += [
            stats.mean_measurement(
                "kld.mean",
                per["kld"],
                "nats/token",
                False,
                "per-window mean of the per-token KL(baseline || compressed); "
                f"n = windows ({tokens} tokens)",
            ),
            stats.mean_measurement(
                "kld.top1_agreement",
                per["top1"],
                "fraction",
                True,
                "per-window share of positions whose argmax matches the "
                f"baseline's; n = windows ({tokens} tokens)",
            ),
        ]
    return result


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

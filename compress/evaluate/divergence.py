"""KL divergence token by token, summarised as llama.cpp's `llama-perplexity --kl-divergence`
summarises it: percentiles and maximum of the per-token KL(baseline || compressed) over every
scored token, and the share of tokens whose top-1 token agrees.

Pure math (torch for one window's logits, numpy for the per-token arrays); the model plumbing
is in `perplexity.py`. Each window leaves two compact arrays (float32 KL, bool top-1 match),
never its logits.

Tokens of one window share their context, so their KL values are correlated: intervals for
the percentiles come from a bootstrap over whole windows (resample windows with replacement,
pool their tokens, recompute the percentile), not from a token-level formula.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from compress import stats

#: name -> percentile (llama.cpp's linear interpolation between order statistics)
PERCENTILES: dict[str, float] = {
    "kld.median": 50.0,
    "kld.p90": 90.0,
    "kld.p95": 95.0,
    "kld.p99": 99.0,
    "kld.p99_9": 99.9,
}
BOOTSTRAP_RESAMPLES = 1000
_CHUNK = 512  # positions per KL chunk: bounds the extra memory to a few chunk x vocab tensors
_BLOCK = 512  # sorted positions per block in the bootstrap's rank search


def token_divergence(
    base_logits: torch.Tensor, comp_logits: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """One window [positions, vocab] -> per position KL(base || comp) in nats (float32) and
    whether both argmaxes agree (bool), from the full-vocabulary softmax."""
    kl, same = [], []
    for s in range(0, base_logits.shape[0], _CHUNK):
        lb = F.log_softmax(base_logits[s : s + _CHUNK].float(), -1)
        lc = F.log_softmax(comp_logits[s : s + _CHUNK].float(), -1)
        kl.append(F.kl_div(lc, lb, log_target=True, reduction="none").sum(-1))
        same.append(lb.argmax(-1) == lc.argmax(-1))
    return (
        torch.cat(kl).cpu().numpy().astype(np.float32, copy=False),
        torch.cat(same).cpu().numpy().astype(bool, copy=False),
    )


def bootstrap_percentiles(
    windows: Sequence[np.ndarray],
    qs: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> np.ndarray:
    """[resamples, len(qs)]: each row resamples the windows with replacement, pools their
    tokens and takes the percentiles `qs` (0-100, linear interpolation as np.percentile).

    Exact, without building the pooled arrays: all tokens are sorted once; a resample is a
    weight per window (how often it was drawn), and the pooled order statistic of rank k is
    the first sorted token whose cumulative weight exceeds k. Cumulative weights at the ends
    of blocks of sorted positions come from one matrix product; only the block holding the
    rank is then scanned token by token."""
    n_win = len(windows)
    lengths = np.array([len(w) for w in windows], dtype=np.int64)
    x = np.concatenate([np.asarray(w, dtype=np.float64) for w in windows])
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], np.repeat(np.arange(n_win), lengths)[order]
    picks = np.random.default_rng(seed).integers(0, n_win, size=(resamples, n_win))
    flat = (picks + n_win * np.arange(resamples)[:, None]).ravel()
    counts = np.bincount(flat, minlength=resamples * n_win).reshape(resamples, n_win)
    total = counts @ lengths
    n_blocks = -(-x.size // _BLOCK)
    hist = np.bincount(
        ws * n_blocks + np.arange(x.size) // _BLOCK, minlength=n_win * n_blocks
    ).reshape(n_win, n_blocks)
    ends = counts.astype(np.float64) @ np.cumsum(hist, axis=1).astype(np.float64)  # exact ints
    out = np.empty((resamples, len(qs)))
    for i, q in enumerate(qs):
        h = q / 100.0 * (total - 1)
        k0 = np.floor(h).astype(np.int64)
        v0 = xs[_rank_position(k0, ends, counts, ws)]
        v1 = xs[_rank_position(np.minimum(k0 + 1, total - 1), ends, counts, ws)]
        out[:, i] = v0 + (h - k0) * (v1 - v0)
    return out


def _rank_position(
    k: np.ndarray, ends: np.ndarray, counts: np.ndarray, ws: np.ndarray
) -> np.ndarray:
    """Per resample: the sorted position of the pooled order statistic of 0-based rank k[r],
    the first position whose cumulative weight (counts[r, window of each position]) passes
    k[r]. `ends[r, b]`: cumulative weight through block b of `_BLOCK` sorted positions."""
    rows = np.arange(k.size)
    block = (ends <= k[:, None]).sum(1)  # the first block whose cumulative weight passes k
    start = np.where(block > 0, ends[rows, np.maximum(block - 1, 0)], 0.0)
    idx = block[:, None] * _BLOCK + np.arange(_BLOCK)
    inside = idx < ws.size
    w = np.take_along_axis(counts, ws[np.minimum(idx, ws.size - 1)], axis=1) * inside
    cum = start[:, None] + np.cumsum(w, axis=1)
    return block * _BLOCK + (cum <= k[:, None]).sum(1)


def token_measurements(
    kl: Sequence[np.ndarray],
    same: Sequence[np.ndarray],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """kld.median / p90 / p95 / p99 / p99_9, kld.max and kld.same_top1 from the per-token
    arrays of every window (`kl`: float KL per token, `same`: bool top-1 match per token)."""
    n_win = len(kl)
    x = np.concatenate([np.asarray(w, dtype=np.float64) for w in kl])
    where = f"all {x.size} scored tokens ({n_win} windows)"
    qs = list(PERCENTILES.values())
    points = np.percentile(x, qs)
    boot = bootstrap_percentiles(kl, qs, resamples, seed) if n_win > 1 else None
    draws = f"{resamples} resamples, seed {seed}"
    out = [
        _percentile_measurement(
            name, q, float(points[i]), None if boot is None else boot[:, i], x.size, where, draws
        )
        for i, (name, q) in enumerate(PERCENTILES.items())
    ]
    out.append(
        _record(
            "kld.max", float(x.max()), "nats/token", False, x.size, None, None,
            f"largest per-token KL(baseline || compressed) over {where}, as llama.cpp's "
            "'Maximum KLD'; no interval: a bootstrap never exceeds the sample maximum, so it "
            "cannot bound it (a gate on kld.max is inconclusive; gate on kld.p99_9 instead)",
        )
    )  # fmt: skip
    out.append(same_top1_measurement(same))
    return out


def _percentile_measurement(
    name: str, q: float, value: float, boot: np.ndarray | None, n: int, where: str, draws: str
) -> dict[str, Any]:
    what = (
        f"{q:g}th percentile of the per-token KL(baseline || compressed) over {where}, "
        "linear interpolation between order statistics (llama.cpp's)"
    )
    if boot is None:
        se, ci, how = None, None, "one window: no interval (the bootstrap resamples windows)"
    elif boot.max() == boot.min():
        se, ci, how = 0.0, None, "every bootstrap resample gives the same value: no interval"
    else:
        lo, hi = np.percentile(boot, [2.5, 97.5])
        se, ci = float(boot.std(ddof=1)), [float(lo), float(hi)]
        how = (
            f"95% CI: percentile bootstrap over windows ({draws}: whole windows resampled "
            "with replacement, their tokens pooled, the percentile recomputed), because "
            "tokens of one window are correlated; stderr: sd of the bootstrap values"
        )
    return _record(name, value, "nats/token", False, n, se, ci, f"{what}; {how}")


def same_top1_measurement(same: Sequence[np.ndarray]) -> dict[str, Any]:
    """Share of tokens whose argmax agrees, over all tokens, as llama.cpp's 'Same top p':
    stderr sqrt(p(1-p)/(n-1)) over tokens (llama.cpp's), plus a 95% Wilson interval."""
    n_win = len(same)
    n = int(sum(np.asarray(s).size for s in same))
    k = int(sum(int(np.count_nonzero(s)) for s in same))
    p = k / n
    se = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None
    z = stats.z_quantile(0.95)
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    ci = [max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))]
    return _record(
        "kld.same_top1", p, "fraction", True, n, se, ci,
        f"share of all {n} scored tokens ({n_win} windows) whose argmax matches the "
        f"baseline's, as llama.cpp's 'Same top p' ({k}/{n}); stderr sqrt(p(1-p)/(n-1)) over "
        "tokens (llama.cpp's binomial convention) and a 95% Wilson interval over tokens. "
        "Tokens of one window are not independent, so this token-level interval is too "
        "narrow; kld.top1_agreement (the same share, interval over windows) is the one to "
        "gate on",
    )  # fmt: skip


def _record(name, value, unit, higher, n, se, ci, method) -> dict[str, Any]:
    return dict(
        zip(
            stats.KEYS,
            (name, value, unit, higher, n, se, ci, [], "measured", method, None),
            strict=True,
        )
    )

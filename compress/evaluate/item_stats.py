"""Statistics of per-item results.

0/1 results: an accuracy with its Wilson interval, and baseline vs variant on the same items:
the paired difference with a seeded paired-bootstrap interval (Newcombe's paired score
interval when fewer than `MIN_DISCORDANT` items changed, where the bootstrap degenerates),
McNemar's exact test on the discordant items, and the flips themselves.

Per-item log-likelihoods: perplexity-like statistics (a transform of total NLL / total weight:
per item, per word, per byte) with seeded bootstrap intervals over items, paired for baseline
vs variant (items resampled jointly)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
MIN_DISCORDANT = 10


def accuracy_measurement(name: str, hits: list[float], method: str) -> dict[str, Any]:
    """Mean of 0/1 hits; stderr as lm-eval reports it (sample sd / sqrt(n)); 95% Wilson
    score interval (valid near 0 and 1, unlike mean +- 2 stderr)."""
    from scipy.stats import binomtest

    n = len(hits)
    k = int(round(sum(hits)))
    p = k / n
    se = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return {
        "name": name,
        "value": p,
        "unit": "fraction",
        "higher_is_better": True,
        "n": n,
        "stderr": se,
        "ci95": [float(ci.low), float(ci.high)],
        "samples": [],
        "status": "measured",
        "method": f"{method}; {k}/{n} items right; 95% CI: Wilson score interval; stderr: "
        "sample sd / sqrt(n) (lm-eval's)",
        "reason": None,
    }


def paired_accuracy(base: list[float], comp: list[float], seed: int = 0) -> dict[str, Any]:
    """Variant minus baseline on the same items: the difference in accuracy, its 95% paired
    bootstrap (percentile) interval over items (seeded), McNemar's exact two-sided p on the
    discordant items, and the items that flipped each way."""
    from scipy.stats import binomtest

    b = np.asarray(base, dtype=float)
    c = np.asarray(comp, dtype=float)
    if b.shape != c.shape or b.size == 0:
        raise ValueError("paired accuracy needs the same non-empty list of items on both sides")
    d = c - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(BOOTSTRAP_RESAMPLES, d.size))
    boots = d[idx].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    base_means = b[idx].mean(axis=1)
    ratios = c[idx].mean(axis=1)[base_means > 0] / base_means[base_means > 0]
    ratio = float(c.mean() / b.mean()) if b.mean() > 0 else None
    r_lo, r_hi = np.percentile(ratios, [2.5, 97.5]) if ratios.size else (None, None)
    lost = [int(i) for i in np.flatnonzero((b == 1) & (c == 0))]
    gained = [int(i) for i in np.flatnonzero((b == 0) & (c == 1))]
    discordant = len(lost) + len(gained)
    p = binomtest(len(gained), discordant, 0.5).pvalue if discordant else 1.0
    how = (
        f"paired bootstrap over the {d.size} items ({BOOTSTRAP_RESAMPLES} resamples, seed "
        f"{seed}, percentile interval)"
    )
    if discordant < MIN_DISCORDANT:
        lo, hi = newcombe_paired(int(((b == 1) & (c == 1)).sum()), len(gained), len(lost), d.size)
        if b.mean() > 0:
            r_lo, r_hi = 1 + lo / b.mean(), 1 + hi / b.mean()
        how = (
            f"Newcombe's paired score interval (method 10; only {discordant} of {d.size} items "
            "changed, too few for a bootstrap); ratio interval = 1 + delta interval / baseline"
        )
    return {
        "delta": float(d.mean()),
        "delta_ci95": [float(lo), float(hi)],
        "ratio": ratio,
        "ratio_ci95": None if r_lo is None else [float(r_lo), float(r_hi)],
        "n": int(d.size),
        "mcnemar_p": float(p),
        "flips_lost": lost,
        "flips_gained": gained,
        "method": f"{how}; McNemar exact test on the {discordant} items that changed",
    }


def newcombe_paired(both: int, gained: int, lost: int, n: int) -> tuple[float, float]:
    """95% interval of p_variant - p_baseline for paired proportions (Newcombe 1998, method 10:
    Wilson score limits of each proportion combined with their phi correlation). `both`: items
    right on both sides; `gained`: wrong before, right after; `lost`: the reverse."""
    from scipy.stats import binomtest

    neither = n - both - gained - lost
    p1, p2 = (both + gained) / n, (both + lost) / n  # variant, baseline
    w1 = binomtest(both + gained, n).proportion_ci(method="wilson")
    w2 = binomtest(both + lost, n).proportion_ci(method="wilson")
    l1, u1, l2, u2 = w1.low, w1.high, w2.low, w2.high
    margins = (both + gained) * (lost + neither) * (both + lost) * (gained + neither)
    phi = (both * neither - gained * lost) / math.sqrt(margins) if margins else 0.0
    dl = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0))
    du = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0))
    theta = p1 - p2
    return theta - dl, theta + du


def task_comparison(base: dict, comp: dict, pair: dict) -> Any:
    """A report Comparison of one task metric from its paired item statistics."""
    from compress.report.schema import Comparison

    lo, hi = pair["delta_ci95"]
    up = base.get("higher_is_better", True)
    verdict = "no significant change"
    if lo > 0 or hi < 0:
        verdict = "better" if (lo > 0) == up else "worse"
    return Comparison(
        metric=base["name"],
        unit=base["unit"],
        higher_is_better=up,
        baseline=base["value"],
        compressed=comp["value"],
        delta=pair["delta"],
        delta_ci95=pair["delta_ci95"],
        ratio=pair["ratio"],
        ratio_ci95=pair["ratio_ci95"],
        paired=True,
        verdict=verdict,
        method=pair["method"],
        scale="bootstrap",
        n=pair["n"],
        p_value=pair.get("mcnemar_p"),
        flips={"lost": pair["flips_lost"], "gained": pair["flips_gained"]}
        if "flips_lost" in pair
        else None,
    )


#: perplexity-like statistics of total NLL / total weight: (unit, transform of that ratio);
#: the transforms take floats and numpy arrays alike
RATIO_STATS = {
    "perplexity": ("ppl", np.exp),
    "word_perplexity": ("ppl", np.exp),
    "byte_perplexity": ("ppl", np.exp),
    "bits_per_byte": ("bits/byte", lambda x: x / math.log(2)),
}


def _ratio_stat(metric: str, nll: np.ndarray, w: np.ndarray, idx: np.ndarray | None = None):
    """The statistic on all items, or on each bootstrap resample (rows of `idx`)."""
    fn = RATIO_STATS[metric][1]
    if idx is None:
        return float(fn(nll.sum() / w.sum()))
    return fn(nll[idx].sum(axis=1) / w[idx].sum(axis=1))


def ratio_measurement(
    name: str, metric: str, nll: list[float], weights: list[float], method: str, seed: int = 0
) -> dict[str, Any]:
    """A perplexity-like figure = transform(sum NLL / sum weights) over items, with a seeded
    bootstrap percentile interval over items and the bootstrap standard error."""
    a, w = np.asarray(nll, dtype=float), np.asarray(weights, dtype=float)
    value = _ratio_stat(metric, a, w)
    idx = np.random.default_rng(seed).integers(0, a.size, size=(BOOTSTRAP_RESAMPLES, a.size))
    boots = _ratio_stat(metric, a, w, idx)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {
        "name": name,
        "value": value,
        "unit": RATIO_STATS[metric][0],
        "higher_is_better": False,
        "n": int(a.size),
        "stderr": float(boots.std(ddof=1)) if a.size > 1 else None,
        "ci95": [float(lo), float(hi)],
        "samples": [],
        "status": "measured",
        "method": f"{method}; 95% CI and stderr: bootstrap over the {a.size} items "
        f"({BOOTSTRAP_RESAMPLES} resamples, seed {seed})",
        "reason": None,
    }


def paired_ratio(
    metric: str, base_nll: list[float], comp_nll: list[float], weights: list[float], seed: int = 0
) -> dict[str, Any]:
    """Variant vs baseline of a perplexity-like figure on the same items: delta and ratio with
    paired bootstrap percentile intervals (items resampled jointly, seeded)."""
    b, c = np.asarray(base_nll, dtype=float), np.asarray(comp_nll, dtype=float)
    w = np.asarray(weights, dtype=float)
    vb, vc = _ratio_stat(metric, b, w), _ratio_stat(metric, c, w)
    idx = np.random.default_rng(seed).integers(0, b.size, size=(BOOTSTRAP_RESAMPLES, b.size))
    bb, bc = _ratio_stat(metric, b, w, idx), _ratio_stat(metric, c, w, idx)
    d_lo, d_hi = np.percentile(bc - bb, [2.5, 97.5])
    r_lo, r_hi = np.percentile(bc / bb, [2.5, 97.5])
    return {
        "delta": vc - vb,
        "delta_ci95": [float(d_lo), float(d_hi)],
        "ratio": vc / vb if vb else None,
        "ratio_ci95": [float(r_lo), float(r_hi)],
        "n": int(b.size),
        "method": f"paired bootstrap over the {b.size} items ({BOOTSTRAP_RESAMPLES} resamples, "
        f"seed {seed}, percentile intervals of the difference and the ratio)",
    }

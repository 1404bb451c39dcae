"""Statistics of per-item 0/1 results: an accuracy with its Wilson interval, and baseline vs
variant on the same items: the paired difference with a seeded paired-bootstrap interval,
McNemar's exact test on the discordant items, and the flips themselves."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 2000


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
    return {
        "delta": float(d.mean()),
        "delta_ci95": [float(lo), float(hi)],
        "ratio": ratio,
        "ratio_ci95": None if r_lo is None else [float(r_lo), float(r_hi)],
        "n": int(d.size),
        "mcnemar_p": float(p),
        "flips_lost": lost,
        "flips_gained": gained,
        "method": f"paired bootstrap over the {d.size} items ({BOOTSTRAP_RESAMPLES} resamples, "
        f"seed {seed}, percentile interval); McNemar exact test on the {discordant} items "
        "that changed",
    }


def task_comparison(base: dict, comp: dict, pair: dict) -> Any:
    """A report Comparison of one task metric from its paired item statistics."""
    from compress.report.schema import Comparison

    lo, hi = pair["delta_ci95"]
    verdict = "better" if lo > 0 else "worse" if hi < 0 else "no significant change"
    return Comparison(
        metric=base["name"],
        unit=base["unit"],
        higher_is_better=True,
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
        p_value=pair["mcnemar_p"],
        flips={"lost": pair["flips_lost"], "gained": pair["flips_gained"]},
    )

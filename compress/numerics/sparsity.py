"""Sparsity as measured on the weights: the fraction of exact zeros and the pattern they form.

A weight is read as rows of inputs ([out, in]; anything with more dimensions is flattened to
[dim 0, rest]). A pattern "N:M" holds when every run of M consecutive inputs of every row has
at least M - N zeros (at most N nonzeros): the structure `compress.numerics.masks` prunes to
and that sparse tensor cores run (2:4). All checks are vectorized: no Python loop over rows.

    "dense"         no zero at all
    "N:M"           the first candidate pattern every group satisfies
    "unstructured"  zeros, but no candidate pattern holds everywhere

An all-zero weight satisfies every N:M pattern and is reported as the first candidate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

#: the patterns looked for by default, most specific first (2:4 implies 4:8)
PATTERNS: tuple[str, ...] = ("2:4", "4:8")


def _rows(weight: torch.Tensor) -> torch.Tensor:
    w = weight.detach()
    if w.dim() == 0:
        return w.reshape(1, 1)
    if w.dim() == 1:
        return w.reshape(1, -1)
    return w.reshape(w.shape[0], -1)


def _nm(pattern: str) -> tuple[int, int]:
    from compress.numerics.masks import parse_structure

    nm = parse_structure(pattern)
    if nm is None:
        raise ValueError(f"'{pattern}' is not an N:M pattern")
    return nm


def zero_count(weight: torch.Tensor) -> int:
    """How many entries are exactly 0."""
    return int((weight.detach() == 0).sum())


def layer_sparsity(weight: torch.Tensor) -> float:
    """The fraction of entries that are exactly 0 (0.0 for an empty tensor)."""
    n = weight.numel()
    return zero_count(weight) / n if n else 0.0


def satisfies(weight: torch.Tensor, n: int, m: int) -> bool:
    """Every run of `m` consecutive inputs of every row has at most `n` nonzeros. False when
    the inputs per row are not a multiple of `m` (the runs would not tile the row)."""
    w = _rows(weight)
    rows, cols = w.shape
    if cols == 0 or cols % m:
        return False
    nonzero = (w != 0).reshape(rows, cols // m, m).sum(-1)
    return bool((nonzero <= n).all())


def detect_pattern(weight: torch.Tensor, candidates: Sequence[str] = PATTERNS) -> str:
    """The sparsity pattern present: "dense", the first of `candidates` ("N:M") that every
    group of every row satisfies, else "unstructured"."""
    w = _rows(weight)
    if not bool((w == 0).any()):
        return "dense"
    for pattern in candidates:
        if satisfies(w, *_nm(pattern)):
            return pattern
    return "unstructured"


def implies(pattern: str, other: str) -> bool:
    """Whether a weight with `pattern` always satisfies `other` too ("2:4" implies "4:8" and
    "1:4" implies "2:4"): each `other` group is whole `pattern` groups holding enough zeros."""
    if pattern == other:
        return True
    if pattern in ("dense", "unstructured") or other in ("dense", "unstructured"):
        return False
    (n1, m1), (n2, m2) = _nm(pattern), _nm(other)
    return m2 % m1 == 0 and (m2 // m1) * (m1 - n1) >= m2 - n2


def overall_pattern(patterns: Iterable[str], candidates: Sequence[str] = PATTERNS) -> str:
    """The pattern of several layers taken together, from each layer's `detect_pattern`: the
    first candidate (or shared pattern) every layer satisfies, "dense" when all are dense,
    else "unstructured"."""
    pats = list(patterns)
    if not pats:
        return "dense"
    if len(set(pats)) == 1:
        return pats[0]
    for cand in dict.fromkeys([*candidates, *pats]):
        if cand not in ("dense", "unstructured") and all(implies(p, cand) for p in pats):
            return cand
    return "unstructured"

"""Pruning masks as pure tensor functions.

A mask is a bool tensor shaped like W [out, in]: True = the weight is pruned (set to zero).
Two structures, both compared within one output row as Wanda does (Sun et al. 2023):

    unstructured   the `sparsity` fraction of lowest-scoring weights of each row
    n:m            in every run of m consecutive inputs of a row, all but the n
                   highest-scoring weights (2:4 = the pattern sparse tensor cores run)

Scores: magnitude |W|; Wanda |W_ij| * ||X_j||_2 (the input feature's norm over calibration
tokens), which for a diagonal input Hessian H = 2/n X^T X is |W_ij| * sqrt(H_jj) up to a
constant, the same ranking.
"""

from __future__ import annotations

import re

import torch

_NM = re.compile(r"^(\d+):(\d+)$")


def parse_structure(structure: str) -> tuple[int, int] | None:
    """ "unstructured" -> None; "2:4" -> (2, 4) (keep n of every m). Raises ValueError else."""
    if structure == "unstructured":
        return None
    m = _NM.match(structure)
    if not m or not 0 < int(m.group(1)) < int(m.group(2)):
        raise ValueError(
            f"'{structure}' is not a mask structure: use 'unstructured' or 'N:M' with 0 < N < M "
            "(keep N weights of every M consecutive inputs, e.g. '2:4')"
        )
    return int(m.group(1)), int(m.group(2))


def structure_sparsity(structure: str, sparsity: float | None) -> float:
    """The fraction of weights the structure prunes (n:m fixes it to 1 - n/m)."""
    nm = parse_structure(structure)
    if nm is None:
        if sparsity is None:
            raise ValueError("unstructured pruning needs a sparsity")
        return sparsity
    return 1 - nm[0] / nm[1]


def prune_mask(
    scores: torch.Tensor, sparsity: float | None, nm: tuple[int, int] | None
) -> torch.Tensor:
    """Bool mask (True = prune) from per-weight scores [out, in]: lowest scores go first."""
    rows, cols = scores.shape
    if nm is not None:
        n, m = nm
        if cols % m:
            raise ValueError(f"{n}:{m} needs in_features divisible by {m}, got {cols}")
        g = scores.float().reshape(rows, cols // m, m)
        drop = torch.topk(g, m - n, dim=-1, largest=False).indices
        mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, drop, True)
        return mask.reshape(rows, cols)
    if sparsity is None or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    k = int(cols * sparsity)
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=scores.device)
    if k:
        idx = torch.topk(scores.float(), k, dim=1, largest=False).indices
        mask.scatter_(1, idx, True)
    return mask


def wanda_scores(W: torch.Tensor, input_sq_norm: torch.Tensor | None = None) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 from the per-input sum (or mean) of squares; magnitude without it."""
    s = W.detach().float().abs()
    if input_sq_norm is None:
        return s
    return s * input_sq_norm.float().clamp(min=0).sqrt()[None, :]

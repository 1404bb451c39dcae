"""Structured pruning's tensor math, apart from model plumbing: importance scores for whole
decoder layers, MLP channels and attention KV groups, and which to keep.

- Layers (depth): a block that barely turns its input is the cheapest to drop. Its score is
  the angular distance between the hidden states entering and leaving it, arccos(cos) / pi,
  averaged over tokens (ShortGPT's "block influence" is 1 - cos; Gromov et al. use the angular
  distance over blocks of n layers). 0 = the layer leaves the residual stream's direction as
  it was, 0.5 = orthogonal.
- MLP channels (width): channel j's output is act_j * down_proj[:, j], so its importance on
  calibration data is ||act_j||_2 * ||down_proj[:, j]||_2 (Wanda's |W| * ||x|| for a whole
  column, as in Minitron's activation-based width importance).
- Attention (width): a query head h contributes o_proj[:, h] @ out_h; its score is
  ||out_h||_2 * ||o_proj[:, h]||_F. Grouped-query attention shares one K/V head among
  `heads_per_group` query heads, so heads are removed a whole KV group at a time: a group's
  score is the sum of its query heads' scores.
"""

from __future__ import annotations

import math

import torch


def angular_distance(x_in: torch.Tensor, x_out: torch.Tensor) -> tuple[float, int]:
    """Sum over tokens of arccos(cos(x_in, x_out)) / pi, and the token count (so chunks add
    up). Inputs [..., hidden]; computed in float64."""
    a = x_in.reshape(-1, x_in.shape[-1]).double()
    b = x_out.reshape(-1, x_out.shape[-1]).double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)
    return float(torch.arccos(cos).sum() / math.pi), int(cos.numel())


def column_scores(act_sq_sum: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per input column j of `weight` [out, in]: sqrt(sum over tokens of act_j^2) *
    ||weight[:, j]||_2. `act_sq_sum` [in] is the running sum of squared activations."""
    if act_sq_sum.shape[0] != weight.shape[1]:
        raise ValueError(f"{act_sq_sum.shape[0]} activation columns for a {weight.shape} weight")
    return act_sq_sum.double().sqrt() * weight.double().norm(dim=0)


def group_scores(
    act_sq_sum: torch.Tensor, o_weight: torch.Tensor, head_dim: int, kv_groups: int
) -> torch.Tensor:
    """KV-group scores [kv_groups] from the o_proj input's squared activations [heads *
    head_dim] and o_proj's weight [hidden, heads * head_dim]. Query heads are laid out group
    by group (head h belongs to group h // heads_per_group), as in Hugging Face's repeat_kv."""
    cols = column_scores(act_sq_sum, o_weight)  # per input column
    heads = cols.numel() // head_dim
    if heads * head_dim != cols.numel() or heads % kv_groups:
        raise ValueError(
            f"{cols.numel()} columns are not {kv_groups} groups of {head_dim}-wide heads"
        )
    # a head's score: ||out_h|| * ||o_proj[:, h]||_F = sqrt(sum of its columns' squares)
    per_head = (cols.reshape(heads, head_dim) ** 2).sum(1).sqrt()
    return per_head.reshape(kv_groups, heads // kv_groups).sum(1)


def keep_top(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the `keep` highest scores, in their original order (ties: lower index)."""
    if not 0 < keep <= scores.numel():
        raise ValueError(f"cannot keep {keep} of {scores.numel()}")
    order = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:keep])


def layers_to_drop(scores: list[float], n_drop: int, protect: tuple[int, ...] = ()) -> list[int]:
    """The `n_drop` layers with the lowest scores, never one in `protect` (ties: the later
    layer first, since late layers are the usual redundant ones); sorted ascending."""
    n = len(scores)
    candidates = [i for i in range(n) if i not in protect and -n <= i < n]
    if not 0 < n_drop <= len(candidates) or n_drop >= n:
        raise ValueError(f"cannot drop {n_drop} of {n} layers ({len(candidates)} droppable)")
    order = sorted(candidates, key=lambda i: (scores[i], -i))
    return sorted(order[:n_drop])


def count(total: int, fraction: float, multiple: int = 1) -> int:
    """How many of `total` units remove `fraction` of them: round(total * fraction) to a
    whole number of `multiple`s. Raises ValueError when that is none or all."""
    remove = round(total * fraction / multiple) * multiple
    if not 0 < remove < total:
        raise ValueError(
            f"removing {fraction:g} of {total} in steps of {multiple} removes {remove}: "
            "expected at least one step and fewer than all"
        )
    return remove

"""Structured pruning's scores on constructed activations, and what they keep."""

from __future__ import annotations

import math

import pytest
import torch

from compress.numerics.structured import (
    angular_distance,
    column_scores,
    count,
    group_scores,
    keep_top,
    layers_to_drop,
)


def test_angular_distance_of_known_angles():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])  # 0, 90 and 180 degrees
    total, n = angular_distance(x, y)
    assert n == 3 and total == pytest.approx(0.0 + 0.5 + 1.0)
    same, _ = angular_distance(x, 5 * x)
    assert same == pytest.approx(0.0, abs=1e-7)


def test_column_scores_weigh_activation_by_the_column_norm():
    act_sq = torch.tensor([4.0, 1.0, 0.0])  # ||act|| = 2, 1, 0
    w = torch.tensor([[1.0, 3.0, 9.0], [0.0, 4.0, 9.0]])  # column norms 1, 5, 12.7
    s = column_scores(act_sq, w)
    assert s.tolist() == pytest.approx([2.0, 5.0, 0.0])
    with pytest.raises(ValueError):
        column_scores(torch.ones(2), w)


def test_group_scores_sum_whole_query_heads_of_a_kv_group():
    head_dim, heads, groups = 2, 4, 2  # heads 0,1 -> group 0; heads 2,3 -> group 1
    act_sq = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # only head 0 is active
    o = torch.ones(3, heads * head_dim)
    s = group_scores(act_sq, o, head_dim, groups)
    assert s[1] == 0 and s[0] == pytest.approx(math.sqrt(3) * math.sqrt(2))
    assert keep_top(s, 1) == [0]
    with pytest.raises(ValueError):
        group_scores(act_sq, o, head_dim, 3)  # 4 heads are not 3 groups


def test_keep_top_and_layers_to_drop():
    assert keep_top(torch.tensor([0.5, 0.1, 0.9, 0.1]), 2) == [0, 2]
    assert keep_top(torch.tensor([1.0, 1.0, 1.0]), 2) == [0, 1]  # ties: lower index kept
    scores = [0.9, 0.05, 0.04, 0.3, 0.01]
    assert layers_to_drop(scores, 2, protect=(0, 4)) == [1, 2]  # the last is protected
    assert layers_to_drop(scores, 2) == [2, 4]
    with pytest.raises(ValueError):
        layers_to_drop(scores, 5)
    with pytest.raises(ValueError):
        layers_to_drop(scores, 4, protect=(0, 4))


@pytest.mark.parametrize(
    ("total", "fraction", "multiple", "expected"),
    [(30, 0.25, 1, 8), (1536, 0.25, 32, 384), (128, 0.25, 32, 32)],
)
def test_count(total, fraction, multiple, expected):
    assert count(total, fraction, multiple) == expected


@pytest.mark.parametrize(("total", "fraction", "multiple"), [(4, 0.05, 1), (64, 0.9, 64)])
def test_count_refuses_none_or_all(total, fraction, multiple):
    with pytest.raises(ValueError, match="fewer than all"):
        count(total, fraction, multiple)

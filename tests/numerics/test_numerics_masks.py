"""compress.numerics.masks: mask structures, Wanda scores, sparsity accounting."""

from __future__ import annotations

import pytest
import torch

from compress.numerics.masks import (
    parse_structure,
    prune_mask,
    structure_sparsity,
    wanda_scores,
)


def test_parse_structure():
    assert parse_structure("unstructured") is None
    assert parse_structure("2:4") == (2, 4)
    for bad in ("4:2", "0:4", "2-4", "half"):
        with pytest.raises(ValueError, match="N:M"):
            parse_structure(bad)
    assert structure_sparsity("2:4", None) == 0.5
    assert structure_sparsity("1:4", 0.9) == 0.75
    assert structure_sparsity("unstructured", 0.3) == 0.3


def test_unstructured_prunes_exactly_the_lowest_per_row():
    scores = torch.rand(8, 40, generator=torch.Generator().manual_seed(0))
    mask = prune_mask(scores, 0.25, None)
    assert mask.sum(1).tolist() == [10] * 8
    kept_min = scores.masked_fill(mask, float("inf")).amin(1)
    pruned_max = scores.masked_fill(~mask, float("-inf")).amax(1)
    assert (pruned_max < kept_min).all()
    assert not prune_mask(scores, 0.0, None).any()


def test_n_m_keeps_the_top_n_of_every_m():
    scores = torch.rand(6, 32, generator=torch.Generator().manual_seed(1))
    mask = prune_mask(scores, None, (2, 4))
    g = mask.reshape(6, 8, 4)
    assert (g.sum(-1) == 2).all()
    sg = scores.reshape(6, 8, 4)
    kept = sg.masked_fill(g, float("inf")).amin(-1)
    dropped = sg.masked_fill(~g, float("-inf")).amax(-1)
    assert (dropped < kept).all()
    with pytest.raises(ValueError, match="divisible by 4"):
        prune_mask(torch.rand(2, 6), None, (2, 4))


def test_wanda_scores_weigh_columns_by_input_norm():
    W = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    assert torch.equal(wanda_scores(W), W.abs())
    s = wanda_scores(W, torch.tensor([4.0, 0.25]))  # ||x||^2 -> sqrt: 2 and 0.5
    assert torch.allclose(s, torch.tensor([[2.0, 0.5], [1.0, 1.0]]))
    # an input that is large makes even a small weight important
    assert prune_mask(s, 0.5, None)[0].tolist() == [False, True]

"""compress.numerics.sparsity: measured sparsity and the N:M pattern the zeros form."""

from __future__ import annotations

import pytest
import torch

from compress.numerics.masks import prune_mask
from compress.numerics.sparsity import (
    detect_pattern,
    implies,
    layer_sparsity,
    overall_pattern,
    satisfies,
    zero_count,
)

G = torch.Generator().manual_seed(0)


def _dense(rows: int = 16, cols: int = 32) -> torch.Tensor:
    return torch.rand(rows, cols, generator=G) + 0.5  # no zero anywhere


def _nm(n: int, m: int, rows: int = 16, cols: int = 32) -> torch.Tensor:
    w = _dense(rows, cols)
    return w.masked_fill(prune_mask(torch.rand(rows, cols, generator=G), None, (n, m)), 0)


def test_all_zeros_is_fully_sparse_and_satisfies_every_pattern():
    w = torch.zeros(8, 16)
    assert layer_sparsity(w) == 1.0 and zero_count(w) == 128
    assert satisfies(w, 2, 4) and satisfies(w, 4, 8) and satisfies(w, 1, 4)
    assert detect_pattern(w) == "2:4"  # the first candidate: nothing violates it


def test_dense():
    w = _dense()
    assert layer_sparsity(w) == 0.0
    assert detect_pattern(w) == "dense"
    assert not satisfies(w, 2, 4)


def test_exactly_2_4():
    w = _nm(2, 4)
    assert layer_sparsity(w) == 0.5
    assert detect_pattern(w) == "2:4"
    assert satisfies(w, 2, 4) and satisfies(w, 4, 8)  # 2:4 implies 4:8
    assert not satisfies(w, 1, 4)


def test_more_zeros_than_needed_still_2_4():
    w = _nm(1, 4)
    assert layer_sparsity(w) == 0.75
    assert detect_pattern(w) == "2:4"
    assert detect_pattern(w, ("1:4", "2:4")) == "1:4"  # the requested structure first


def test_2_4_violated_in_one_group():
    w = _nm(2, 4)
    row, group = 5, 3
    cols = slice(4 * group, 4 * group + 4)
    z = (w[row, cols] == 0).nonzero().flatten()
    w[row, 4 * group + int(z[0])] = 1.0  # that group now has 3 nonzeros
    assert layer_sparsity(w) == pytest.approx(0.5 - 1 / w.numel())
    assert not satisfies(w, 2, 4)
    assert not satisfies(w, 4, 8)  # its run of 8 has 3 zeros, not 4
    assert detect_pattern(w) == "unstructured"


def test_4_8_that_is_not_2_4():
    row = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0], dtype=torch.float32)  # 3 + 1 zeros per half
    w = row.repeat(6, 4)
    assert satisfies(w, 4, 8) and not satisfies(w, 2, 4)
    assert detect_pattern(w) == "4:8"
    assert layer_sparsity(w) == 0.5


def test_unstructured_half_zeros():
    w = _dense(16, 64)
    w = w.masked_fill(prune_mask(torch.rand(16, 64, generator=G), 0.5, None), 0)
    assert layer_sparsity(w) == 0.5
    assert detect_pattern(w) == "unstructured"


def test_columns_not_a_multiple_of_the_group():
    w = torch.zeros(4, 6)  # all zero, but runs of 4 do not tile a row of 6
    assert not satisfies(w, 2, 4)
    assert detect_pattern(w, ("2:4",)) == "unstructured"


def test_shapes_other_than_2d():
    v = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 4.0])
    assert detect_pattern(v) == "2:4" and layer_sparsity(v) == 0.5
    conv = _nm(2, 4, 8, 32).reshape(8, 2, 16)  # [out, in, k] rows flatten in order
    assert detect_pattern(conv) == "2:4"
    assert layer_sparsity(torch.empty(0, 4)) == 0.0


def test_half_precision_and_no_python_loop_over_rows():
    w = _nm(2, 4, 4096, 256).half()  # a loop over rows would make this slow; it is one op
    assert detect_pattern(w) == "2:4" and layer_sparsity(w) == 0.5


def test_implies_and_overall():
    assert implies("2:4", "4:8") and implies("1:4", "2:4") and implies("2:4", "2:4")
    assert not implies("4:8", "2:4") and not implies("2:4", "3:8")
    assert not implies("dense", "2:4") and not implies("unstructured", "2:4")
    assert overall_pattern(["2:4", "2:4"]) == "2:4"
    assert overall_pattern(["2:4", "4:8"]) == "4:8"
    assert overall_pattern(["1:4", "2:4"]) == "2:4"
    assert overall_pattern(["dense", "dense"]) == "dense"
    assert overall_pattern(["2:4", "dense"]) == "unstructured"
    assert overall_pattern(["2:4", "unstructured"]) == "unstructured"
    assert overall_pattern([]) == "dense"

"""compress.export.gguf_blocks: our grids as GGUF blocks, checked against gguf's own reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT

from compress.export import gguf_blocks as gb
from compress.numerics.grid import as_int4, dequantize, int8_codes, quantize

W = torch.randn(48, 256, generator=torch.Generator().manual_seed(0))


def _int4_grid(bits, group, sym, w=W):
    qt = as_int4(quantize(w, bits, group, sym))
    return gb.grid_from_int4(qt.q, qt.scale, qt.zero), dequantize(quantize(w, bits, group, sym))


@pytest.mark.parametrize(
    ("bits", "group", "sym", "qtype"),
    [
        (4, 32, True, QT.Q4_0),
        (4, 128, True, QT.Q4_0),
        (4, 64, False, QT.Q4_1),
        (3, 32, True, QT.Q4_0),  # 3-bit codes shifted into Q4_0's range
        (3, None, False, QT.Q4_1),  # per-channel grid as repeated blocks
        (2, 64, True, QT.Q4_0),
    ],
)
def test_low_bit_grids_map_exactly(bits, group, sym, qtype):
    grid, reference = _int4_grid(bits, group, sym)
    assert torch.allclose(grid.dequantize(), reference, atol=1e-6)
    data, got_type, how, err = gb.encode(grid)
    assert got_type == qtype and how.startswith("exact")
    back = gb.from_blocks(data, got_type).reshape(W.shape)
    # only fp16 rounding of d (and m) separates the two: 2**-11 of each scale, per code step
    assert float((back - reference).abs().max()) < 8 * float(grid.scale.abs().max()) * 2**-10
    assert err["relative"] < 2e-3


def test_bf16_scales_of_symmetric_int4_are_bit_exact():
    """Scales that are bf16 already (how Int4Linear keeps them) fit fp16 exactly: zero error."""
    grid, _ = _int4_grid(4, 32, True)
    grid = gb.Grid(grid.values, grid.scale.bfloat16().float(), grid.zero)
    _, qtype, _, err = gb.encode(grid)
    assert qtype == QT.Q4_0 and err["max_abs"] == 0.0


def test_same_codes_are_written():
    """The integer codes in the Q4_0 bytes are ours, not a fresh rounding of the floats."""
    grid, _ = _int4_grid(4, 32, True)
    data = gb.to_blocks(grid, QT.Q4_0)
    qs = data.reshape(-1, 18)[:, 2:]
    codes = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.int16) - 8
    assert np.array_equal(codes.reshape(W.shape), grid.values.numpy())


def test_int8_per_channel_maps_to_q8_0():
    qt = quantize(W, 8, None, True)
    grid = gb.grid_from_int8(int8_codes(qt), qt.scale[:, 0])
    data, qtype, how, err = gb.encode(grid)
    assert qtype == QT.Q8_0 and how.startswith("exact")
    assert err["relative"] < 1e-3
    assert data.shape == (48, 256 // 32 * 34)


@pytest.mark.parametrize(("bits", "group", "sym"), [(4, 16, True), (8, 32, False)])
def test_grids_without_a_block_format_are_requantised_and_say_so(bits, group, sym):
    qt = quantize(W, bits, group, sym)
    grid = gb.Grid(qt.q.to(torch.int16) - 2 ** (bits - 1), qt.scale, qt.zero)
    data, qtype, how, err = gb.encode(grid)
    assert qtype == QT.Q8_0 and "re-quantised" in how
    assert 0 < err["max_abs"] < 0.05  # stated, and small for Q8_0


def test_llama_row_order_matches_the_converter_permutation():
    from compress.export.gguf_model import llama_row_order

    w = torch.arange(24 * 3).reshape(24, 3)
    n_head = 3
    expected = w.reshape(n_head, 2, 24 // n_head // 2, 3).swapaxes(1, 2).reshape(24, 3)
    assert torch.equal(w[llama_row_order(24, n_head)], expected)


def test_a_q4_0_mapping_refuses_a_non_integer_zero():
    grid, _ = _int4_grid(4, 32, False)
    with pytest.raises(ValueError, match="integer k"):
        gb.to_blocks(grid, QT.Q4_0)

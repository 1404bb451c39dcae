"""compress.numerics.grid: the pure quantize / dequantize / pack functions."""

from __future__ import annotations

import pytest
import torch

from compress.numerics.grid import (
    QuantizedTensor,
    as_int4,
    container_group,
    dequantize,
    int8_codes,
    max_abs_error,
    pack_int4,
    quantize,
    unpack_int4,
)


def _w(out_f=16, in_f=64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_f, in_f, generator=g) * 0.05


def _per_element_scale(qt: QuantizedTensor) -> torch.Tensor:
    out_f, in_f = qt.q.shape
    g = in_f // qt.groups
    return qt.scale.repeat_interleave(g, dim=1)


@pytest.mark.parametrize(("bits", "group_size"), [(8, None), (4, 32), (4, 16), (3, 8), (2, 64)])
def test_symmetric_codes_in_range_zero_is_zero_and_error_within_half_step(bits, group_size):
    w = _w()
    w[0, :5] = torch.tensor([0.3, -0.3, 0.0, 1e-4, -1e-4])  # an outlier row
    qt = quantize(w, bits, group_size, symmetric=True)
    groups = 1 if group_size is None else 64 // group_size
    assert qt.q.dtype == torch.uint8 and qt.q.shape == w.shape
    assert qt.scale.shape == qt.zero.shape == (16, groups) and qt.groups == groups
    assert torch.all(qt.zero == 0)
    assert int(qt.q.min()) >= 0 and int(qt.q.max()) <= 2**bits - 1
    err = (dequantize(qt) - w).abs()
    assert torch.all(err <= _per_element_scale(qt) / 2 * (1 + 1e-5) + 1e-12)
    # the grid is used: the largest magnitude of each group lands on the edge code
    mid = 2 ** (bits - 1)
    codes = qt.q.reshape(16, groups, -1).int() - mid
    assert torch.all(codes.abs().amax(-1) == mid - 1)


@pytest.mark.parametrize(("bits", "group_size"), [(8, None), (4, 32), (4, 64)])
def test_asymmetric_codes_span_full_range_and_error_within_half_step(bits, group_size):
    w = _w() + 0.02  # not centred on zero
    qt = quantize(w, bits, group_size, symmetric=False)
    groups = 1 if group_size is None else 64 // group_size
    q = qt.q.reshape(16, groups, -1)
    assert torch.all(q.amin(-1) == 0) and torch.all(q.amax(-1) == 2**bits - 1)
    assert torch.any(qt.zero != 0)
    err = (dequantize(qt) - w).abs()
    assert torch.all(err <= _per_element_scale(qt) / 2 * (1 + 1e-4) + 1e-7)
    assert max_abs_error(w, qt) == pytest.approx(float(err.max()))


def _q4_1_weight(out_f: int, in_f: int, d: torch.Tensor, m: torch.Tensor, seed: int = 1):
    """w = d * q + m per block of 32 (GGUF Q4_1). Each block uses codes 0 and 15 so its
    min/max sit on the grid ends, as they do in a real Q4_1 tensor whose block spans its grid."""
    g = torch.Generator().manual_seed(seed)
    blocks = in_f // 32
    q = torch.randint(0, 16, (out_f, blocks, 32), generator=g)
    q[..., 3] = 0
    q[..., 17] = 15
    w = (d[..., None] * q.float() + m[..., None]).reshape(out_f, in_f)
    return w, q


def test_asymmetric_g32_reproduces_q4_1_grid_exactly_dyadic():
    out_f, in_f = 24, 128
    g = torch.Generator().manual_seed(0)
    d = torch.randint(1, 64, (out_f, in_f // 32), generator=g).float() / 1024  # exact in fp32
    m = -torch.randint(0, 64, (out_f, in_f // 32), generator=g).float() / 256
    w, q = _q4_1_weight(out_f, in_f, d, m)
    qt = quantize(w, bits=4, group_size=32, symmetric=False)
    assert torch.equal(qt.q.reshape(out_f, -1, 32).long(), q)
    assert torch.equal(qt.scale, d)
    assert torch.equal(qt.zero, m + 8 * d)
    assert torch.equal(dequantize(qt), w)  # bit-exact, not approx


def test_asymmetric_g32_reproduces_q4_1_grid_exactly_fp16_params():
    # GGUF stores d and m as float16; the dequantized float32 weights must round-trip too
    out_f, in_f = 32, 256
    g = torch.Generator().manual_seed(3)
    d = (torch.rand(out_f, in_f // 32, generator=g) * 0.01 + 1e-3).half().float()
    m = (-torch.rand(out_f, in_f // 32, generator=g) * 0.1).half().float()
    w, q = _q4_1_weight(out_f, in_f, d, m, seed=4)
    qt = quantize(w, bits=4, group_size=32, symmetric=False)
    assert torch.equal(qt.q.reshape(out_f, -1, 32).long(), q)
    assert torch.equal(dequantize(qt), w)


def test_dequantize_dtype_and_input_dtype_independent():
    w = _w()
    qt = quantize(w.to(torch.bfloat16), 8)
    assert qt.scale.dtype == torch.float32
    assert dequantize(qt, torch.bfloat16).dtype == torch.bfloat16
    assert dequantize(qt).dtype == torch.float32


def test_constant_and_zero_groups_do_not_produce_nan():
    w = torch.zeros(4, 64)
    w[1] = 0.25
    for sym in (True, False):
        qt = quantize(w, 4, 32, symmetric=sym)
        assert torch.isfinite(qt.scale).all() and torch.isfinite(qt.zero).all()
        assert torch.equal(dequantize(qt), w)


@pytest.mark.parametrize("group_size", [48, 40, 128])
def test_group_size_not_dividing_in_features_raises(group_size):
    with pytest.raises(ValueError, match="does not divide"):
        quantize(_w(in_f=96 if group_size == 128 else 64), 4, group_size)


@pytest.mark.parametrize("bits", [0, 1, 9, 16])
def test_bits_out_of_range_raises(bits):
    with pytest.raises(ValueError, match="bits"):
        quantize(_w(), bits)


def test_pack_unpack_int4_round_trip_exact_and_layout():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (8, 64), generator=g, dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (8, 32)
    assert torch.equal(unpack_int4(packed), q)
    # element 2j in the low nibble, 2j+1 in the high nibble
    assert int(packed[0, 0]) == int(q[0, 0]) | (int(q[0, 1]) << 4)
    every = torch.arange(256, dtype=torch.int32)
    pairs = torch.stack([every % 16, every // 16], -1).reshape(1, -1).to(torch.uint8)
    assert torch.equal(pack_int4(pairs)[0].int(), every)


def test_pack_int4_odd_width_raises():
    with pytest.raises(ValueError):
        pack_int4(torch.zeros(2, 5, dtype=torch.uint8))


def test_int8_codes_are_signed_offsets():
    qt = quantize(_w(), 8)
    c = int8_codes(qt)
    assert c.dtype == torch.int8
    assert torch.equal(c.to(torch.int16), qt.q.to(torch.int16) - 128)
    assert int(c.abs().max()) == 127


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [32, None])
def test_as_int4_is_exact(bits, symmetric, group_size):
    W = torch.randn(16, 128, generator=torch.Generator().manual_seed(0))
    qt = quantize(W, bits, group_size, symmetric)
    q4 = as_int4(qt)
    assert q4.bits == 4 and torch.equal(q4.q, qt.q)  # same codes, in 4-bit containers
    assert q4.group_size == (group_size or 128)
    torch.testing.assert_close(
        dequantize(q4), dequantize(qt), rtol=1e-6, atol=1e-6
    )  # exact algebra


def test_container_group():
    assert container_group(576) == 64
    assert container_group(1536) == 256
    assert container_group(96) == 32
    assert container_group(48) is None
    with pytest.raises(ValueError):
        as_int4(quantize(torch.randn(4, 48), 3))
    with pytest.raises(ValueError):
        as_int4(quantize(torch.randn(4, 64), 8))

"""compress.numerics.awq: scale search and clipping search on synthetic activations."""

from __future__ import annotations

import pytest
import torch

from compress.numerics.awq import (
    awq_scales,
    fake_quantize,
    gram,
    output_error,
    search_clip,
    search_scales,
    weight_absmean,
)
from compress.numerics.grid import dequantize, quantize

Q = {"bits": 4, "group_size": 32, "symmetric": False}


def _acts(n=512, d=128, seed=0, outliers=(5, 77, 100)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[:, list(outliers)] *= 25  # salient channels, as AWQ assumes
    return x


def _weights(out=(96, 64), d=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o, d, generator=g) * 0.05 for o in out]


def _direct_mse(x, w, wq):
    """Mean over tokens of ||x (wq - w)^T||^2, from the activations themselves."""
    return float(((x @ wq.T - x @ w.T) ** 2).sum(-1).mean())


def test_output_error_equals_direct_mse():
    x, (w, _) = _acts(), _weights()
    wq = fake_quantize(w, **Q)
    assert output_error(wq - w, gram(x)) == pytest.approx(_direct_mse(x, w, wq), rel=1e-4)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [32, 64, None])
def test_fake_quantize_is_the_grid_round_trip_bit_for_bit(symmetric, group_size):
    (w, _) = _weights()
    w[3, :64] = 0  # constant groups: the grid's scale floor
    w[5, 0] = 1.0  # an outlier
    q = {"bits": 4, "group_size": group_size, "symmetric": symmetric}
    assert torch.equal(fake_quantize(w, **q), dequantize(quantize(w, **q)))
    assert torch.equal(fake_quantize(w, 8, None, True), dequantize(quantize(w, 8, None, True)))


def test_awq_scales_normalised_and_alpha0_identity():
    m = _acts().abs().mean(0)
    s = awq_scales(m, 0.5)
    assert float(s.max() * s.min()) == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(awq_scales(m, 0.0), torch.ones_like(m))
    assert int(s.argmax()) in (5, 77, 100)  # salient channels get the largest scale
    wm = weight_absmean(_weights(), 32)
    assert wm.shape == m.shape and float(wm.max()) <= 1.0


@pytest.mark.parametrize("duo", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_scales_alpha_in_grid_and_never_worse_than_rtn(seed, duo):
    x, ws = _acts(seed=seed), _weights(seed=seed + 10)
    res = search_scales(ws, gram(x), x.abs().mean(0), grid=10, duo_scaling=duo, **Q)
    assert res.alpha in [i / 10 for i in range(10)]
    assert len(res.errors) == 10 and res.error == min(res.errors)
    assert res.rtn_error == res.errors[0]
    # check on the activations themselves: the chosen scales vs alpha = 0 (plain RTN)
    w = torch.cat(ws)
    s = res.scales
    mse_awq = _direct_mse(x, w, fake_quantize(w * s, **Q) / s)
    mse_rtn = _direct_mse(x, w, fake_quantize(w, **Q))
    assert mse_awq <= mse_rtn * (1 + 1e-4)
    assert mse_awq == pytest.approx(res.error, rel=1e-3)


def test_search_scales_helps_with_salient_channels():
    x, ws = _acts(), _weights()
    res = search_scales(ws, gram(x), x.abs().mean(0), grid=20, **Q)
    assert res.alpha > 0
    assert res.error < 0.9 * res.rtn_error


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("seed", [0, 3])
def test_clipping_never_increases_the_error(symmetric, seed):
    x = _acts(seed=seed)
    g = torch.Generator().manual_seed(seed + 5)
    w = torch.randn(64, 128, generator=g) * 0.05
    w[:, 7] *= 12  # a heavy-tailed weight column: clipping can pay
    q = dict(Q, symmetric=symmetric)
    h = gram(x)
    res = search_clip(w, h, grid=20, max_shrink=0.5, **q)
    assert res.error <= res.unclipped_error
    assert ((res.ratios > 0.5 - 1e-6) & (res.ratios <= 1.0)).all()
    # measured on the activations: never worse than quantizing the unclipped weight
    mse_clip = _direct_mse(x, w, fake_quantize(res.weight, **q))
    mse_plain = _direct_mse(x, w, fake_quantize(w, **q))
    assert mse_clip <= mse_plain * (1 + 1e-4)
    if res.applied:
        assert res.weight.abs().max() <= w.abs().max()


def test_clipping_finds_a_gain_on_heavy_tails():
    x = torch.randn(512, 64, generator=torch.Generator().manual_seed(0))
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1)) * 0.05
    w[torch.arange(32), torch.arange(32) * 2 % 64] = 0.6  # one rare big weight per row
    res = search_clip(w, gram(x), **Q)
    assert res.applied and res.error < res.unclipped_error
    assert (res.ratios < 1).any()


def test_clipping_reverts_when_it_cannot_help():
    # identity activations weigh every weight equally: min/max rounding is already tight for
    # uniform weights; whatever happens, the returned error is the unclipped one or better
    x = torch.eye(64)
    w = torch.linspace(-1, 1, 64).repeat(8, 1)
    res = search_clip(w, gram(x), **Q)
    assert res.error <= res.unclipped_error
    if not res.applied:
        assert torch.equal(res.weight, w) and torch.all(res.ratios == 1)

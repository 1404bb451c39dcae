"""compress.numerics.smooth: scales and exact (output-preserving) folds, on small float modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.numerics.smooth import (
    fold_into_linear_rows,
    fold_into_norm,
    scale_input_columns,
    smooth_scales,
)


def _rms_norm(x, w, offset=0.0, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (offset + w)


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def _outlier_acts(n=256, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[:, 3] *= 40  # an outlier channel, as in real LLM activations
    return x


def test_smooth_scales_formula_and_clamp():
    a = torch.tensor([4.0, 1.0, 0.0, 9.0])
    w1 = torch.tensor([[1.0, 2.0, 1.0, 0.0], [0.5, -4.0, 1.0, 0.0]])
    w2 = torch.tensor([[-2.0, 1.0, 3.0, 0.0]])
    s = smooth_scales(a, [w1, w2], alpha=0.5)
    # w max per input channel over both weights: [2, 4, 3, 0]
    assert s[0] == pytest.approx(4**0.5 / 2**0.5)
    assert s[1] == pytest.approx(1 / 4**0.5)
    assert s[2] == 1.0  # never active in calibration: untouched
    assert s[3] == 1.0  # all-zero weight column: untouched
    assert smooth_scales(a, [w1], alpha=1.0)[0] == pytest.approx(4.0)
    tiny = smooth_scales(torch.tensor([1e-30]), [torch.tensor([[1e10]])], alpha=0.5)
    assert tiny >= 1e-5


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.85, 1.0])
def test_smooth_scales_balance_activation_and_weight_ranges(alpha):
    x = _outlier_acts()
    lin = nn.Linear(32, 16, bias=False)
    s = smooth_scales(x.abs().amax(0), [lin.weight], alpha)
    # after smoothing: max|X_j / s_j| = max|X_j|^(1-a) max|W_j|^(1-a), max|W_j s_j| = (..)^a
    xs = (x / s).abs().amax(0)
    ws = (lin.weight * s).abs().amax(0)
    a, w = x.abs().amax(0), lin.weight.abs().amax(0)
    torch.testing.assert_close(xs, a.pow(1 - alpha) * w.pow(1 - alpha), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ws, a.pow(alpha) * w.pow(alpha), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("bias", [False, True])
def test_norm_fold_preserves_outputs(offset, bias):
    """norm -> {q, k, v}-like group: identical outputs in float after smoothing."""
    torch.manual_seed(0)
    d = 32
    x = _outlier_acts(d=d)
    w_norm = torch.randn(d) * 0.3 + (0.0 if offset else 1.0)
    w_norm[3] = 30.0  # an outlier channel after the norm (x's own is normalised away)
    b_norm = torch.randn(d) * 0.1 if bias else None
    lins = [nn.Linear(d, o, bias=True) for o in (32, 8, 8)]

    def forward(w, b):
        h = _rms_norm(x, w, offset) + (b if b is not None else 0)
        return [lin(h) for lin in lins]

    ref = forward(w_norm, b_norm)
    h = _rms_norm(x, w_norm, offset) + (b_norm if bias else 0)
    s = smooth_scales(h.abs().amax(0), [lin.weight for lin in lins], 0.5)
    assert float(s.max() / s.min()) > 5  # a real rescaling, not ~identity
    w2 = w_norm.clone()
    b2 = b_norm.clone() if bias else None
    fold_into_norm(w2, s, b2, offset=offset)
    for lin in lins:
        scale_input_columns(lin.weight.data, s)
    for out, want in zip(forward(w2, b2), ref, strict=True):
        assert _rel(out, want) < 1e-5


def test_gemma_one_plus_w_fold_is_exact():
    """(1 + w') == (1 + w) / s, not w / s: checked against the HF Gemma 3 norm itself."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    torch.manual_seed(1)
    norm = Gemma3RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(0, 0.5)
    x = torch.randn(64, 16) * torch.linspace(0.1, 30, 16)
    s = torch.rand(16) * 4 + 0.25
    ref = norm(x) / s
    fold_into_norm(norm.weight.data, s, offset=1.0)
    torch.testing.assert_close(norm(x), ref, rtol=1e-5, atol=1e-6)
    # the Llama form would be wrong here
    w = torch.zeros(16)
    fold_into_norm(w, s, offset=0.0)
    assert torch.equal(w, torch.zeros(16))  # 0 / s: the Gemma norm's 1 + 0 would stay 1


@pytest.mark.parametrize("bias", [False, True])
def test_linear_row_fold_preserves_gated_mlp(bias):
    """up_proj rows / s, down_proj columns * s: act(gate) * up is linear in up."""
    torch.manual_seed(2)
    x = torch.randn(128, 24)
    gate, up, down = nn.Linear(24, 48, bias=bias), nn.Linear(24, 48, bias=bias), nn.Linear(48, 24)

    def mlp():
        return down(torch.nn.functional.silu(gate(x)) * up(x))

    with torch.no_grad():
        ref = mlp()
        inner = torch.nn.functional.silu(gate(x)) * up(x)
        s = smooth_scales(inner.abs().amax(0), [down.weight], 0.5)
        fold_into_linear_rows(up.weight.data, s, up.bias.data if bias else None)
        scale_input_columns(down.weight.data, s)
        assert _rel(mlp(), ref) < 1e-5


def test_v_to_o_fold_preserves_attention():
    """v_proj rows / s, o_proj columns * s: attention mixes tokens, not channels."""
    torch.manual_seed(3)
    n, d, heads = 20, 32, 4
    x = torch.randn(1, n, d)
    q, k, v, o = (nn.Linear(d, d, bias=True) for _ in range(4))

    def attn():
        def split(t):
            return t.view(1, n, heads, d // heads).transpose(1, 2)

        a = torch.nn.functional.scaled_dot_product_attention(
            split(q(x)), split(k(x)), split(v(x)), is_causal=True
        )
        return o(a.transpose(1, 2).reshape(1, n, d))

    with torch.no_grad():
        ref = attn()
        s = torch.rand(d) * 10 + 0.1
        fold_into_linear_rows(v.weight.data, s, v.bias.data)
        scale_input_columns(o.weight.data, s)
        assert _rel(attn(), ref) < 1e-5

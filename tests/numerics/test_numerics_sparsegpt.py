"""compress.numerics.sparsegpt: the OBS solve must beat mask-only pruning on the layer output."""

from __future__ import annotations

import pytest
import torch

from compress.numerics.hessian import hessian_update
from compress.numerics.masks import prune_mask, wanda_scores
from compress.numerics.sparsegpt import sparsegpt_prune


def _layer(seed=0, rows=32, cols=64, tokens=512):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    # correlated inputs with a few loud channels, as in transformer activations
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    X = torch.randn(tokens, cols, generator=g) @ mix
    X[:, :4] *= 8
    H, _ = hessian_update(None, X, 0)
    return W, X, H


def _out_err(W, Wp, X):
    return float(((X @ (W - Wp).t()) ** 2).sum() / (X @ W.t()).pow(2).sum())


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_beats_magnitude_and_wanda_masks(nm):
    W, X, H = _layer()
    Wp, mask, row_err = sparsegpt_prune(W, H, 0.5, nm, block_size=16)
    assert torch.equal(Wp == 0, mask)
    assert abs(mask.float().mean().item() - 0.5) < 1e-6
    if nm:
        assert (mask.reshape(32, 16, 4).sum(-1) == 2).all()
    sq = X.pow(2).mean(0)
    errs = {}
    for name, scores in {"magnitude": wanda_scores(W), "wanda": wanda_scores(W, sq)}.items():
        m = prune_mask(scores, 0.5, nm)
        errs[name] = _out_err(W, W.masked_fill(m, 0), X)
    ours = _out_err(W, Wp, X)
    assert ours < 0.8 * errs["wanda"] < errs["magnitude"]
    # the returned row error is the same quantity, with H = 2/n X^T X
    rel = float(row_err.sum() / ((W @ H) * W).sum())
    assert rel == pytest.approx(ours, rel=1e-3)


def test_identity_hessian_is_blockwise_magnitude():
    W = torch.randn(8, 32, generator=torch.Generator().manual_seed(3))
    Wp, mask, _ = sparsegpt_prune(W, torch.eye(32), 0.25, None, block_size=16)
    for b in range(2):  # smallest |w| of each 16-column block, over all rows, no updates
        blk = W[:, 16 * b : 16 * (b + 1)].abs().flatten()
        thresh = blk.sort().values[int(blk.numel() * 0.25) - 1]
        assert torch.equal(mask[:, 16 * b : 16 * (b + 1)].flatten(), blk <= thresh)
    assert torch.equal(Wp, W.masked_fill(mask, 0))


def test_dead_inputs_and_bad_shapes():
    W, X, H = _layer(cols=16, rows=4)
    H[3, :] = 0
    H[:, 3] = 0
    Wp, _, _ = sparsegpt_prune(W, H, 0.5)
    assert (Wp[:, 3] == 0).all() and torch.isfinite(Wp).all()
    with pytest.raises(ValueError, match="expected"):
        sparsegpt_prune(W, torch.eye(8))
    with pytest.raises(ValueError, match="divisible by 3"):
        sparsegpt_prune(W, H, None, (1, 3))
    with pytest.raises(ValueError, match="sparsity"):
        sparsegpt_prune(W, H, 1.0)

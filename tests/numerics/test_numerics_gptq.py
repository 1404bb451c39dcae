"""compress.numerics.gptq: the GPTQ solve on an nn.Linear(64, 32)-sized weight, synthetic inputs."""

from __future__ import annotations

import pytest
import torch

from compress.numerics.gptq import gptq_quantize
from compress.numerics.grid import dequantize, quantize
from compress.numerics.hessian import hessian_update, output_energy


def _data(seed: int = 0):
    """W [32, 64] and correlated inputs X = Z @ A (A: identity + random mixing), a few inputs
    larger than the rest, as real activations have."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(32, 64, generator=g) * 0.1
    A = torch.eye(64) + torch.randn(64, 64, generator=g) / 8
    X = torch.randn(2048, 64, generator=g) @ A
    X[:, :8] *= 4
    return W, X


def _out_err(X, W, Wq) -> float:
    return float((X @ W.t() - X @ Wq.t()).norm())


# measured first (seeds 0..2): GPTQ / RTN output error 0.57 .. 0.67 across these cases
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [16, None])
def test_gptq_beats_rtn_on_output_error(seed, bits, symmetric, act_order, group_size):
    W, X = _data(seed)
    H, n = hessian_update(None, X, 0)
    assert n == 2048
    qt, row_err = gptq_quantize(W, H, bits, group_size, symmetric, act_order, 0.01, 128)
    rtn = quantize(W, bits, group_size, symmetric)
    e_gptq = _out_err(X, W, dequantize(qt))
    e_rtn = _out_err(X, W, dequantize(rtn))
    assert e_gptq <= 0.8 * e_rtn, (e_gptq, e_rtn)
    # codes on the grid, shapes as grid.quantize's
    assert qt.q.dtype == torch.uint8 and qt.q.shape == W.shape
    assert int(qt.q.max()) <= 2**bits - 1
    assert qt.scale.shape == rtn.scale.shape and qt.zero.shape == rtn.zero.shape
    if symmetric:
        assert not qt.zero.any()
    # the returned per-row error is ||X (w - w_q)||^2 * 2 / n
    direct = ((X @ (W - dequantize(qt)).t()) ** 2).sum(0) * 2 / n
    torch.testing.assert_close(row_err, direct, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("group_size", [16, None])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
def test_identity_hessian_is_rtn(group_size, act_order, symmetric):
    W, _ = _data()
    qt, _ = gptq_quantize(W, torch.eye(64), 4, group_size, symmetric, act_order)
    rtn = quantize(W, 4, group_size, symmetric)
    assert torch.equal(qt.q, rtn.q)
    assert torch.equal(qt.scale, rtn.scale) and torch.equal(qt.zero, rtn.zero)


def test_dead_columns():
    W, X = _data()
    X[:, [3, 40]] = 0.0  # inputs that never fire
    H, _ = hessian_update(None, X, 0)
    assert H[3, 3] == 0 and H[40, 40] == 0
    for act_order in (False, True):
        qt, row_err = gptq_quantize(W, H, 4, 16, True, act_order)
        deq = dequantize(qt)
        assert torch.isfinite(deq).all() and torch.isfinite(row_err).all()
        assert (deq[:, [3, 40]] == 0).all()  # weight column zeroed, as the reference does
        assert _out_err(X, W, deq) < 0.8 * _out_err(X, W, dequantize(quantize(W, 4, 16)))


def test_all_dead_hessian_still_quantizes():
    W, _ = _data()
    qt, row_err = gptq_quantize(W, torch.zeros(64, 64), 4, 16)
    assert (dequantize(qt) == 0).all() and (row_err == 0).all()


def test_block_size_and_group_alignment_do_not_change_much():
    W, X = _data()
    H, _ = hessian_update(None, X, 0)
    errs = []
    for bs in (1, 16, 24, 64, 128):  # 24: not a multiple of 16, rounded up to 32 internally
        qt, _ = gptq_quantize(W, H, 4, 16, True, False, 0.01, bs)
        errs.append(_out_err(X, W, dequantize(qt)))
    assert max(errs) < 1.05 * min(errs), errs
    # block sizes that are multiples of the group size give the same result (exact algebra)
    a, _ = gptq_quantize(W, H, 4, 16, True, False, 0.01, 16)
    b, _ = gptq_quantize(W, H, 4, 16, True, False, 0.01, 64)
    assert (a.q != b.q).float().mean() < 0.01


def test_hessian_update_matches_direct_sum():
    _, X = _data()
    H, n = None, 0
    for chunk in X.split(300):
        H, n = hessian_update(H, chunk[None], n)  # [1, rows, in]: leading dims flattened
    torch.testing.assert_close(H, 2 / X.shape[0] * X.t() @ X, rtol=1e-4, atol=1e-4)
    assert n == X.shape[0] and H.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_hessian_update_low_precision_inputs(dtype):
    _, X = _data()
    X = X * 30  # float16 x^T x over 2048 rows would overflow without the pre-scaling
    Xl = X.to(dtype)
    H, _ = hessian_update(None, Xl, 0)
    ref = 2 / X.shape[0] * Xl.float().t() @ Xl.float()
    assert torch.isfinite(H).all()
    torch.testing.assert_close(H, ref, rtol=2e-2, atol=1e-2 * float(ref.abs().max()))


def test_static_groups_without_act_order_and_refusals():
    W, X = _data()
    H, _ = hessian_update(None, X, 0)
    qt, _ = gptq_quantize(W, H, 4, 16, static_groups=True)
    torch.testing.assert_close(qt.scale, quantize(W, 4, 16).scale)  # from the original W
    with pytest.raises(ValueError, match="static_groups"):
        gptq_quantize(W, H, 4, 16, act_order=True, static_groups=False)
    with pytest.raises(ValueError, match="divide"):
        gptq_quantize(W, H, 4, 24)
    with pytest.raises(ValueError, match="expected"):
        gptq_quantize(W, H[:32, :32], 4, 16)


def test_non_positive_definite_hessian_gets_more_damping():
    W, _ = _data()
    H = -torch.eye(64)  # no damping makes this positive definite at 1%; 10x more does
    H[0, 0] = 200.0  # mean diag ~ 2.1, so damping 0.01 gives +0.02 (still negative)
    qt, _ = gptq_quantize(W, H, 4, 16)
    assert torch.isfinite(dequantize(qt)).all()
    with pytest.raises(ValueError, match="positive definite"):
        gptq_quantize(W, torch.full((64, 64), float("nan")), 4, 16)


def test_output_energy():
    W, X = _data()
    H, n = hessian_update(None, X, 0)
    torch.testing.assert_close(
        output_energy(W, H), ((X @ W.t()) ** 2).sum(0) * 2 / n, rtol=1e-3, atol=1e-6
    )


@pytest.mark.parametrize(("group_size", "act_order"), [(16, False), (16, True), (None, False)])
def test_keep_zeros_keeps_a_pruning_mask(group_size, act_order):
    from compress.numerics.sparsegpt import sparsegpt_prune

    W, X = _data(0)
    H, _ = hessian_update(None, X, 0)
    Wp, mask, _ = sparsegpt_prune(W, H, 0.5)
    qt, err = gptq_quantize(Wp, H, 4, group_size, True, act_order, keep_zeros=True)
    deq = dequantize(qt)
    assert (deq[mask] == 0).all()  # every pruned weight is exactly 0 (a small kept one may
    assert float((deq == 0).float().mean()) < 0.6  # also round to 0, but few do)
    assert torch.isfinite(err).all()
    # without keep_zeros the error spread refills the pruned weights
    loose, _ = gptq_quantize(Wp, H, 4, group_size, True, act_order)
    assert float((dequantize(loose) == 0).float().mean()) < 0.4
    with pytest.raises(ValueError, match="symmetric"):
        gptq_quantize(Wp, H, 4, group_size, False, act_order, keep_zeros=True)


def test_big_matrices_go_in_row_chunks_with_the_same_codes(monkeypatch):
    """Rows are solved independently against one U: chunking keeps every code (scales of
    groups found mid-solve may differ in the last bits: the GEMM shapes differ)."""
    from compress.numerics import gptq

    g = torch.Generator().manual_seed(0)
    W = torch.randn(512, 256, generator=g)
    X = torch.randn(2048, 256, generator=g)
    H = X.t() @ X * (2 / 2048)
    for kw in ({"group_size": 64}, {"group_size": 64, "act_order": True}, {"group_size": None}):
        whole, err_whole = gptq.gptq_quantize(W, H, 4, **kw)
        monkeypatch.setattr(gptq, "ROW_CHUNK", 256 * 100)  # 100 rows per chunk, 6 chunks
        chunked, err_chunked = gptq.gptq_quantize(W, H, 4, **kw)
        monkeypatch.undo()
        assert torch.equal(whole.q, chunked.q), kw
        torch.testing.assert_close(whole.scale, chunked.scale, rtol=1e-5, atol=0)
        torch.testing.assert_close(err_whole, err_chunked, rtol=1e-4, atol=1e-6)


def test_in_place_factor_matches_torch(monkeypatch):
    from compress.numerics import hessian

    g = torch.Generator().manual_seed(1)
    X = torch.randn(600, 300, generator=g)
    H = X.t() @ X / 600
    want, d1 = hessian.chol_inverse_upper(H, 0.01)
    monkeypatch.setattr(hessian, "IN_PLACE_MIN", 100)
    got, d2 = hessian.chol_inverse_upper(H, 0.01)
    assert d1 == d2 and torch.equal(got, got.triu()) and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    Hd = H.clone()
    Hd.diagonal().add_(0.01 * float(H.diagonal().mean()))
    torch.testing.assert_close(got.t() @ got @ Hd, torch.eye(300), rtol=0, atol=1e-4)


def test_a_consumed_hessian_becomes_the_factor_with_the_same_codes(monkeypatch):
    """consume_h: H (big, float32, CPU) is overwritten by the factor; the codes equal those of
    the copying path and the row errors, now computed from the factor, agree up to rounding."""
    from compress.numerics import gptq, hessian

    monkeypatch.setattr(hessian, "IN_PLACE_MIN", 100)
    g = torch.Generator().manual_seed(2)
    W = torch.randn(96, 256, generator=g)
    X = torch.randn(1024, 256, generator=g)
    X[:, 7] = 0  # a dead input
    H = X.t() @ X * (2 / 1024)
    want, err_want = gptq.gptq_quantize(W, H.clone(), 4, 64)
    factor, _ = hessian.chol_inverse_upper(_with_dead_as_one(H), 0.01)
    Hc = H.clone()
    got, err_got = gptq.gptq_quantize(W, Hc, 4, 64, consume_h=True)
    assert torch.equal(want.q, got.q) and torch.equal(want.scale, got.scale)
    torch.testing.assert_close(err_got, err_want, rtol=1e-3, atol=1e-5)
    assert torch.equal(Hc, factor)  # H itself is the factor now
    # act_order (a permuted copy) and small matrices keep H
    Hc = H.clone()
    gptq.gptq_quantize(W, Hc, 4, 64, act_order=True, consume_h=True)
    assert torch.equal(Hc, H)


def _with_dead_as_one(H):
    H = H.clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    return H


def test_a_consumed_hessian_is_rebuilt_when_damping_must_grow(monkeypatch):
    """Not positive definite at the first damping: H is rebuilt from its untouched lower
    triangle and tried again; the result equals the copying path's, damping included."""
    from compress.numerics import hessian

    monkeypatch.setattr(hessian, "IN_PLACE_MIN", 100)
    g = torch.Generator().manual_seed(3)
    V = torch.linalg.qr(torch.randn(200, 200, generator=g))[0]
    eig = torch.linspace(1.0, 2.0, 200)
    eig[0] = -0.05  # needs damping 0.1 x mean(diag) (~1.5) to become positive definite
    H = (V * eig) @ V.t()
    H = (H + H.t()) / 2
    want, d_want = hessian.chol_inverse_upper(H, 0.01)
    Hc = H.clone()
    got, d_got = hessian.chol_inverse_upper(Hc, 0.01, consume=True)
    assert d_got == d_want > 0.01 and got.data_ptr() == Hc.data_ptr()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert torch.equal(got, got.triu())


def test_wide_inputs_fold_into_h_in_row_chunks(monkeypatch):
    """From IN_PLACE_MIN features on, x is cast to float32 a few rows at a time: the same H
    up to the order of the sums."""
    from compress.numerics import hessian

    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 700, 300, generator=g).to(torch.bfloat16)
    want, n1 = hessian.hessian_update(None, x, 0)
    monkeypatch.setattr(hessian, "IN_PLACE_MIN", 100)
    monkeypatch.setattr(hessian, "CAST_CHUNK", 300 * 500)  # 500 rows a chunk: 5 chunks
    got, n2 = hessian.hessian_update(None, x, 0)
    assert n1 == n2 == 2100
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

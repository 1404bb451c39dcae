import pytest
import torch
from torch import nn

from compress.quant.w8a8 import W8A8Linear, int8_matmul, quantize_rows, supports


def _linear(k=64, n=48, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    return lin


def test_quantize_rows_bounds_error():
    x = torch.randn(5, 64)
    q, s = quantize_rows(x)
    assert q.dtype == torch.int8 and s.shape == (5, 1)
    assert q.abs().max() <= 127
    assert (q.float() * s - x).abs().max() <= s.max() / 2 + 1e-6


def test_int8_matmul_exact_against_int64():
    a = torch.randint(-127, 128, (3, 32), dtype=torch.int8)
    b = torch.randint(-127, 128, (16, 32), dtype=torch.int8)
    ref = a.long() @ b.long().t()
    assert torch.equal(int8_matmul(a, b.t()).long(), ref)


@pytest.mark.parametrize("per_channel", [True, False])
def test_w8a8_close_to_float(per_channel):
    lin = _linear()
    m = W8A8Linear.from_float(lin, torch.float32, per_channel)
    x = torch.randn(2, 7, 64)
    y, ref = m(x), lin(x)
    assert y.shape == ref.shape
    rel = (y - ref).norm() / ref.norm()
    assert rel < 0.02, rel
    if not per_channel:
        assert torch.unique(m.scale).numel() == 1


def test_w8a8_refuses_sizes_the_gemm_cannot_take():
    assert not supports(60, 48)
    with pytest.raises(ValueError, match="multiples of 8"):
        W8A8Linear.from_float(nn.Linear(60, 48))


def test_w8a8_export_roundtrip():
    lin = _linear()
    m = W8A8Linear.from_float(lin, torch.float32)
    shell = W8A8Linear.shell(m.spec(), torch.float32)
    shell.load_export(m.export())
    x = torch.randn(3, 64)
    assert torch.equal(shell(x), m(x))


def test_w8a8_serialized_through_the_model_folder(tmp_path):
    from compress.quant.serialize import load_compressed, save_compressed
    from compress.testing import tiny_handle

    h = tiny_handle()
    layer = h.model.model.layers[0].mlp
    layer.up_proj = W8A8Linear.from_float(layer.up_proj, torch.float32)
    ids = torch.randint(0, h.model.config.vocab_size, (1, 9))
    with torch.no_grad():
        ref = h.model(ids).logits
    save_compressed(h, tmp_path / "m")
    back = load_compressed(tmp_path / "m")
    assert isinstance(back.model.model.layers[0].mlp.up_proj, W8A8Linear)
    with torch.no_grad():
        assert torch.allclose(back.model(ids).logits, ref, atol=1e-5)


@pytest.mark.gpu
def test_w8a8_cuda_int_mm_decode_and_prefill():
    lin = _linear(576, 1536).cuda().half()
    m = W8A8Linear.from_float(lin, torch.float16)
    for rows in (1, 16, 17, 300):  # below and above the kernel's 16-row minimum
        x = torch.randn(rows, 576, device="cuda", dtype=torch.float16)
        y, ref = m(x), lin(x)
        assert y.dtype == torch.float16 and y.shape == (rows, 1536)
        assert ((y - ref).float().norm() / ref.float().norm()) < 0.02
    # the CUDA result matches the same int8 math on CPU
    x = torch.randn(4, 576, device="cuda", dtype=torch.float16)
    cpu = W8A8Linear.from_float(lin.float().cpu(), torch.float32)
    assert torch.allclose(m(x).float().cpu(), cpu(x.float().cpu()), atol=2e-2, rtol=1e-2)

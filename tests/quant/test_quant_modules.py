"""compress.quant.modules: Int8Linear / Int4Linear / Int8Embedding against dequantize()."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.numerics.grid import dequantize, quantize
from compress.quant.modules import INT4_GROUP_SIZES, Int4Linear, Int8Embedding, Int8Linear

BF16 = torch.bfloat16


def _linear(in_f=128, out_f=48, bias=True, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    if bias:
        with torch.no_grad():
            lin.bias.normal_(0, 0.5)
    return lin


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).abs().max() / ref.float().abs().max())


def _inputs(in_f: int):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(5, in_f, generator=g), torch.randn(2, 3, in_f, generator=g)]


def _int8(lin):
    qt = quantize(lin.weight, 8, None, symmetric=True)
    return Int8Linear.from_float(lin, qt, BF16), qt


def _int4(lin, group_size=32, symmetric=False):
    qt = quantize(lin.weight, 4, group_size, symmetric=symmetric)
    return Int4Linear.from_float(lin, qt, BF16), qt


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("make", [_int8, _int4], ids=["int8", "int4"])
def test_matches_linear_on_dequantized_weight(make, bias):
    lin = _linear(bias=bias)
    m, qt = make(lin)
    w = dequantize(qt)
    for x in _inputs(lin.in_features):
        with torch.no_grad():
            ref = F.linear(x, w, lin.bias)
        for dtype in (torch.float32, BF16):
            y = m(x.to(dtype))
            assert y.dtype == dtype
            assert y.shape == ref.shape
            assert _rel_err(y, ref) < 2e-2, (dtype, _rel_err(y, ref))
    # the float weight is not kept around: only integer codes and small per-group tensors
    assert not any(
        t.numel() >= w.numel() and t.is_floating_point() for t in m.state_dict().values()
    )


def test_int4_symmetric_also_matches():
    lin = _linear(in_f=256, out_f=32, bias=False)
    for g in INT4_GROUP_SIZES:
        m, qt = _int4(lin, g, symmetric=True)
        x = _inputs(256)[1]
        assert _rel_err(m(x), F.linear(x, dequantize(qt))) < 2e-2


def test_int8_storage_is_int8():
    m, qt = _int8(_linear())
    assert m.qweight.dtype == torch.int8 and m.qweight.shape == (48, 128)
    assert m.scale.dtype == BF16
    assert torch.equal(m.qweight.to(torch.int16), qt.q.to(torch.int16) - 128)
    assert not any(p.requires_grad for p in m.parameters())


def test_int8_refuses_grouped_or_asymmetric_grids():
    lin = _linear()
    with pytest.raises(ValueError):
        Int8Linear.from_float(lin, quantize(lin.weight, 8, 32), BF16)
    with pytest.raises(ValueError):
        Int8Linear.from_float(lin, quantize(lin.weight, 8, None, symmetric=False), BF16)
    with pytest.raises(ValueError):
        Int8Linear.from_float(lin, quantize(lin.weight, 4, None), BF16)


def test_int4_codes_equal_original_codes_and_storage_is_half_a_byte():
    lin = _linear(in_f=256, out_f=64, bias=False)
    for g in (32, 64):
        m, qt = _int4(lin, g)
        assert torch.equal(m.codes(), qt.q)
        assert m.qweight.numel() * m.qweight.element_size() <= 256 * 64 // 2


def test_int4_refuses_bad_group_sizes():
    lin = _linear(in_f=96, out_f=16)
    with pytest.raises(ValueError):
        Int4Linear.from_float(lin, quantize(lin.weight, 4, 16), BF16)  # 16 not a kernel group
    with pytest.raises(ValueError):
        Int4Linear(96, 16, False, 64, BF16)  # 64 does not divide 96
    with pytest.raises(ValueError):
        Int4Linear(128, 16, False, 48, BF16)
    with pytest.raises(ValueError):
        Int4Linear.from_float(lin, quantize(lin.weight, 4, None), BF16)  # needs groups
    Int4Linear(96, 16, False, 32, BF16)  # 32 divides 96: fine


@pytest.mark.parametrize(
    ("make", "shell"),
    [
        (_int8, lambda: Int8Linear(128, 48, False, BF16)),
        (_int4, lambda: Int4Linear(128, 48, False, 32, BF16)),
        (lambda lin: _int4(lin, 128, True), lambda: Int4Linear(128, 48, False, 128, BF16)),
    ],
    ids=["int8", "int4-g32", "int4-g128-sym"],
)
def test_export_load_export_is_bit_exact(make, shell):
    lin = _linear(bias=False)
    m, _ = make(lin)
    exported = m.export()
    assert all(t.dtype in (torch.int8, torch.uint8, BF16) for t in exported.values())
    fresh = shell()
    fresh.load_export({k: v.clone() for k, v in exported.items()})
    for x in _inputs(128):
        assert torch.equal(fresh(x), m(x))
        assert torch.equal(fresh(x.to(BF16)), m(x.to(BF16)))
    if isinstance(m, Int4Linear):
        assert exported["qweight_packed"].shape == (48, 64)  # two codes per byte
        assert torch.equal(fresh.codes(), m.codes())


def test_int8_embedding_rows_equal_dequantized_rows_and_share_storage():
    torch.manual_seed(0)
    head = nn.Linear(32, 100, bias=False)
    qt = quantize(head.weight, 8)
    src = Int8Linear.from_float(head, qt, BF16)
    ids = torch.tensor([[0, 5, 99], [7, 7, 42]])
    w = dequantize(qt)
    for scale in (None, 3.0):
        emb = Int8Embedding(src, torch.float32, embed_scale=scale)
        out = emb(ids)
        assert out.shape == (2, 3, 32) and out.dtype == torch.float32
        # scale is held in bf16 by the source: rows equal q * bf16(scale)
        exact = src.qweight.float()[ids] * src.scale.float()[ids][..., None] * (scale or 1.0)
        assert torch.equal(out, exact)
        ref = w[ids] * (scale or 1.0)
        assert torch.allclose(out, ref, rtol=1e-2, atol=1e-6)
        assert emb.weight_source is src
        # the module holds no tensors of its own: storage is the source's
        assert list(emb.parameters()) == [] and list(emb.buffers()) == []
    # writing into the source changes the embedding: one storage, not a copy
    before = Int8Embedding(src, torch.float32)(ids)
    with torch.no_grad():
        src.qweight[5].neg_()
    after = Int8Embedding(src, torch.float32)(ids)
    assert torch.equal(after[0, 1], -before[0, 1])
    assert torch.equal(after[0, 0], before[0, 0])


def test_int8_embedding_shares_data_ptr_in_rtn_model():
    from compress.methods import run_stage
    from compress.methods.rtn import RTNConfig
    from compress.testing import tiny_handle

    h = tiny_handle()
    run_stage(h, RTNConfig(bits=8, ignore=[]))
    emb, head = h.model.model.embed_tokens, h.model.lm_head
    assert isinstance(emb, Int8Embedding) and isinstance(head, Int8Linear)
    assert emb.weight_source.qweight.data_ptr() == head.qweight.data_ptr()
    assert emb.weight_source.scale.data_ptr() == head.scale.data_ptr()


# -- CUDA (run where a GPU is present; skipped elsewhere) ------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("make", [_int8, _int4], ids=["int8", "int4"])
def test_cuda_kernels_match_the_cpu_kernels(make):
    """tinygemm int4 / int8 weight-only on CUDA give the CPU kernel's result, and export the
    same portable codes (the saved model does not depend on where it was quantized)."""
    lin = _linear(576, 192)  # SmolLM2-like K: tinygemm innerKTiles 4
    cpu, qt = make(lin)
    gpu, _ = make(lin.cuda())
    assert gpu.qweight.is_cuda
    x = torch.randn(3, 576)
    y_cpu = cpu(x.to(BF16))
    y_gpu = gpu(x.cuda().to(BF16)).cpu()
    assert _rel_err(y_gpu, y_cpu) < 2e-2
    for k, t in cpu.export().items():
        assert torch.equal(gpu.export()[k].cpu(), t), k


def test_cuda_inner_k_tiles_divides_k():
    from compress.quant.modules import cuda_inner_k_tiles

    assert cuda_inner_k_tiles(2048) == 8
    assert cuda_inner_k_tiles(576) == 4  # SmolLM2 hidden size: K % 128 != 0
    assert cuda_inner_k_tiles(96) == 2
    with pytest.raises(ValueError, match="divisible by 32"):
        cuda_inner_k_tiles(48)


def test_int4_rows_pack_1024_at_a_time_as_in_one_piece():
    from compress.numerics.grid import QuantizedTensor
    from compress.quant.modules import Int4Linear

    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (2064, 64), generator=g, dtype=torch.uint8)  # 3 chunks of rows
    scale, zero = torch.rand(2064, 2, generator=g) + 0.1, torch.randn(2064, 2, generator=g)
    lin = torch.nn.Linear(64, 2064, bias=False)
    m = Int4Linear.from_float(lin, QuantizedTensor(q, scale, zero, 4, 32), torch.bfloat16)
    whole = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
    assert torch.equal(m.qweight, whole)
    assert torch.equal(m.codes(), q)

"""compress.methods.rtn and compress.methods.dynamic_int8 on the tiny Llama."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from compress.errors import BadInput, ReleaseFailed
from compress.methods import dynamic_int8, run_stage
from compress.methods.rtn import RTNConfig
from compress.profile.memory import weight_bytes
from compress.quant.dynamic import DynamicInt8Linear
from compress.quant.modules import Int4Linear, Int8Embedding, Int8Linear
from compress.testing import kl_per_token, tiny_handle

IDS = torch.randint(4, 100, (2, 48), generator=torch.Generator().manual_seed(0))
# initializer_range 0.1 instead of HF's 0.02: logits then spread enough that KL separates a
# faithful quantization (1e-4 .. 2e-2) from a broken one (~0.6 between two random seeds)
SPREAD = {"initializer_range": 0.1}


def _logits(h) -> torch.Tensor:
    with torch.no_grad():
        return h.model(IDS).logits.float()


@pytest.fixture(scope="module")
def reference():
    h = tiny_handle(**SPREAD)
    return {"bytes": weight_bytes(h.model), "logits": _logits(h)}


def _linear_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def test_random_seed_kl_is_large(reference):
    # guards the bounds below: an unrelated model is far away
    assert kl_per_token(reference["logits"], _logits(tiny_handle(seed=1, **SPREAD))) > 0.3


def test_int8_all_linear(reference):
    h = tiny_handle(**SPREAD)
    names = _linear_names(h.model)
    info = run_stage(h, RTNConfig(bits=8, ignore=[]))
    m = h.model
    assert info.details["layers"] == len(names) == 15
    assert (
        info.details["weights_quantized"]
        == sum(
            p.numel()
            for n, p in tiny_handle().model.named_parameters()
            if n.endswith("proj.weight")
        )
        + 128 * 64
    )
    assert all(isinstance(m.get_submodule(n), Int8Linear) for n in names)
    assert h.dtype == "bfloat16"
    # tied embedding reads the lm_head's int8 storage
    emb = m.model.embed_tokens
    assert isinstance(emb, Int8Embedding) and emb.weight_source is m.lm_head
    assert emb.weight_source.qweight.data_ptr() == m.lm_head.qweight.data_ptr()
    assert any("stored once" in n for n in info.notes)
    # bytes: int8 codes + bf16 scales per output channel + bf16 norms, embedding counted once
    codes = sum(x.weight.numel() for x in tiny_handle().model.modules() if isinstance(x, nn.Linear))
    scales = 2 * sum(x.out_features for x in m.modules() if isinstance(x, Int8Linear))
    norms = 2 * 64 * (2 * 2 + 1)
    assert weight_bytes(m) == codes + scales + norms
    assert weight_bytes(m) < 0.35 * reference["bytes"]
    kl = kl_per_token(reference["logits"], _logits(h))
    assert kl < 5e-3, kl
    ids_emb = emb(IDS[:, :4])
    assert ids_emb.dtype == torch.bfloat16 and torch.isfinite(ids_emb).all()


def test_int4_g32_plus_int8_head(reference):
    h = tiny_handle(**SPREAD)
    run_stage(h, RTNConfig(bits=4, group_size=32, symmetric=False))
    assert isinstance(h.model.lm_head, nn.Linear)  # ignored by default
    assert h.model.lm_head.weight is h.model.model.embed_tokens.weight
    run_stage(h, RTNConfig(bits=8, targets=["lm_head"], ignore=[]))
    m = h.model
    assert isinstance(m.lm_head, Int8Linear) and isinstance(m.model.embed_tokens, Int8Embedding)
    assert all(
        isinstance(m.get_submodule(n), Int4Linear) for n in _linear_names(tiny_handle().model)[:-1]
    )
    ratio = weight_bytes(m) / reference["bytes"]
    assert ratio < 0.2, ratio  # below what int8 everywhere gives (~0.26)
    kl4 = kl_per_token(reference["logits"], _logits(h))
    assert kl4 < 0.1, kl4


def test_int8_closer_than_int4(reference):
    h8, h4 = tiny_handle(**SPREAD), tiny_handle(**SPREAD)
    run_stage(h8, RTNConfig(bits=8, ignore=[]))
    run_stage(h4, RTNConfig(bits=4, group_size=32, ignore=[]))
    assert (
        kl_per_token(reference["logits"], _logits(h8))
        < kl_per_token(reference["logits"], _logits(h4)) / 10
    )


def test_int4_lm_head_leaves_embedding_float_and_says_so():
    h = tiny_handle()
    info = run_stage(h, RTNConfig(bits=4, group_size=64, ignore=[]))
    assert isinstance(h.model.lm_head, Int4Linear)
    emb = h.model.model.embed_tokens
    assert isinstance(emb, nn.Embedding) and emb.weight.dtype == torch.bfloat16
    assert any("NOT compressed" in n for n in info.notes)
    assert torch.isfinite(_logits(h)).all()


def test_float32_compute_dtype_keeps_float_parts_float32():
    h = tiny_handle()
    run_stage(h, RTNConfig(bits=8, compute_dtype="float32"))
    assert h.dtype == "float32"
    assert h.model.model.norm.weight.dtype == torch.float32
    assert h.model(IDS).logits.dtype == torch.float32


def test_group_size_not_dividing_raises_and_changes_nothing():
    h = tiny_handle(hidden_size=48, intermediate_size=96, num_attention_heads=4)
    before = {k: v.clone() for k, v in h.model.state_dict().items()}
    types = {n: type(m) for n, m in h.model.named_modules()}
    with pytest.raises(BadInput) as ei:
        run_stage(h, RTNConfig(bits=4, group_size=32))
    msg = str(ei.value)
    assert "model.layers.0.self_attn.q_proj (in_features 48)" in msg
    assert "12 layer(s)" in msg and "down_proj" not in msg  # down_proj's 96 is divisible
    assert {n: type(m) for n, m in h.model.named_modules()} == types
    after = h.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert h.dtype == "float32"


def test_group_size_error_avoided_by_ignoring_bad_layers():
    h = tiny_handle(hidden_size=48, intermediate_size=96, num_attention_heads=4)
    info = run_stage(h, RTNConfig(bits=4, group_size=32, targets=["re:.*down_proj"], ignore=[]))
    assert info.details["layers"] == 2
    assert isinstance(h.model.model.layers[0].mlp.down_proj, Int4Linear)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": 8, "group_size": 32},
        {"bits": 8, "symmetric": False},
        {"bits": 4, "group_size": 48},
        {"bits": 5},
        {"bits": 3, "group_size": 48},
        {"bits": 8, "compute_dtype": "float64"},
        {"bits": 8, "unknown": 1},
    ],
)
def test_config_validator_refuses(kwargs):
    with pytest.raises(ValidationError):
        RTNConfig(**kwargs)


@pytest.mark.parametrize(
    "cfg",
    [
        RTNConfig(bits=3, group_size=32, symmetric=False),
        RTNConfig(bits=2, group_size=32, symmetric=False),
        RTNConfig(bits=4),  # per channel
    ],
    ids=["w3g32", "w2g32", "w4-perchannel"],
)
def test_low_bits_and_per_channel_sit_exactly_in_int4_containers(cfg):
    from compress.numerics.grid import dequantize, quantize

    h = tiny_handle(**SPREAD)
    w = h.model.model.layers[0].mlp.down_proj.weight.detach().clone()
    info = run_stage(h, cfg)
    m = h.model.model.layers[0].mlp.down_proj
    assert isinstance(m, Int4Linear)
    # the stored codes, run through the kernel, give exactly the b-bit grid's weights (bf16)
    ref = dequantize(quantize(w, cfg.bits, cfg.group_size, cfg.symmetric)).to(torch.bfloat16)
    eye = torch.eye(m.in_features, dtype=torch.bfloat16)
    got = m(eye).t()
    assert torch.allclose(got.float(), ref.float(), atol=2e-2 * float(w.abs().max())), cfg
    if cfg.bits < 4:
        assert len(torch.unique(m.codes())) <= 2**cfg.bits
        assert any(f"{cfg.bits}-bit codes" in n for n in info.notes)
    else:
        assert any("per-channel scales" in n for n in info.notes)


def test_per_channel_low_bits_refuse_layers_no_int4_group_divides():
    from torch import nn as tnn

    from compress.errors import BadInput

    h = tiny_handle()
    h.model.model.layers[0].mlp.down_proj = tnn.Linear(48, 64, bias=False)
    before = {k: v.clone() for k, v in h.model.state_dict().items()}
    with pytest.raises(BadInput, match="per-channel int4 is stored in int4 groups"):
        run_stage(h, RTNConfig(bits=4))
    after = h.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_config_accepts_kernel_shapes():
    assert RTNConfig(bits=8).group_size is None
    for g in (32, 64, 128, 256):
        assert RTNConfig(bits=4, group_size=g, symmetric=False).group_size == g


@pytest.mark.parametrize("cfg", [RTNConfig(bits=8), RTNConfig(bits=4, group_size=32)])
def test_nan_weight_raises_naming_the_layer(cfg):
    h = tiny_handle()
    with torch.no_grad():
        h.model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(ReleaseFailed, match=r"model\.layers\.1\.mlp\.up_proj"):
        run_stage(h, cfg)


def test_targets_without_linear_raise():
    with pytest.raises(BadInput, match="no nn.Linear"):
        run_stage(tiny_handle(), RTNConfig(bits=8, targets=["LlamaRMSNorm"]))


@pytest.mark.parametrize(
    "second",
    [
        (run_stage, RTNConfig(bits=8, targets=["lm_head"], ignore=[], compute_dtype="float32")),
        (run_stage, dynamic_int8.DynamicInt8Config()),
    ],
    ids=["rtn-float32-after-bf16", "dynamic-after-rtn"],
)
def test_stages_with_different_dtypes_stay_runnable_or_refuse(second):
    h = tiny_handle()
    run_stage(h, RTNConfig(bits=4, group_size=32, targets=["re:.*mlp.*"], ignore=[]))
    fn, cfg = second
    try:
        fn(h, cfg)
    except BadInput:
        return  # refusing the mix up front is an acceptable fix
    assert torch.isfinite(_logits(h)).all()


# -- dynamic_int8 ------------------------------------------------------------------------


@pytest.mark.parametrize("ignore", [["lm_head"], []])
def test_dynamic_int8_replaces_linears(reference, ignore):
    h = tiny_handle(**SPREAD)
    info = run_stage(h, dynamic_int8.DynamicInt8Config(ignore=ignore))
    names = [n for n in _linear_names(tiny_handle().model) if n not in ignore]
    assert info.details["layers"] == len(names)
    assert all(isinstance(h.model.get_submodule(n), DynamicInt8Linear) for n in names)
    assert isinstance(h.model.lm_head, DynamicInt8Linear) == (ignore == [])
    assert h.dtype == "float32"
    ratio = weight_bytes(h.model) / reference["bytes"]
    assert ratio < 0.45, ratio
    out = _logits(h)
    assert torch.isfinite(out).all()
    kl = kl_per_token(reference["logits"], out)
    assert 0 < kl < 0.03, kl


def test_dynamic_int8_per_tensor_runs():
    h = tiny_handle()
    run_stage(h, dynamic_int8.DynamicInt8Config(per_channel=False))
    assert torch.isfinite(_logits(h)).all()


def test_dynamic_int8_off_cpu_raises_and_changes_nothing():
    h = tiny_handle()
    h.device = "cuda"
    with pytest.raises(BadInput, match="cuda"):
        run_stage(h, dynamic_int8.DynamicInt8Config())
    assert not any(isinstance(m, DynamicInt8Linear) for m in h.model.modules())

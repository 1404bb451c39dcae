"""compress.profile.kernels: the execution-path choice and its replay."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.methods import run_stage
from compress.methods.rtn import RTNConfig
from compress.profile.kernels import apply_policy, choose_policy, describe
from compress.quant.modules import Int4Linear, Int8Linear, set_paths
from compress.testing import tiny_handle


def _int8_model():
    h = tiny_handle(seed=3)
    run_stage(h, RTNConfig(method="rtn", bits=8, targets=["Linear"], ignore=[]))
    return h


@pytest.mark.parametrize("path", Int8Linear.PATHS)
def test_every_int8_path_computes_the_same_product(path):
    torch.manual_seed(0)
    lin = _int8_model().model.model.layers[0].mlp.down_proj
    assert isinstance(lin, Int8Linear)
    x = torch.randn(3, 5, lin.in_features)
    set_paths(lin, "int8pack", "int8pack")
    ref = lin(x)
    for rows in (1, 15):  # below and above the threshold
        set_paths(lin, path, path, rows_threshold=8)
        y = lin(x[:1, :rows] if rows == 1 else x)
        r = ref[:1, :1] if rows == 1 else ref
        assert y.dtype == x.dtype and y.shape == r.shape
        torch.testing.assert_close(y, r, rtol=2e-2, atol=2e-2)  # bf16 vs fp32 rounding only


def test_small_and_large_calls_take_their_own_path(monkeypatch):
    lin = _int8_model().model.model.layers[0].mlp.up_proj
    set_paths(lin, "int8pack", "dequant_float32", rows_threshold=4)
    called = []
    real = torch._weight_int8pack_mm
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda *a: called.append(1) or real(*a))
    lin(torch.randn(1, 4, lin.in_features))  # 4 rows: decode path
    assert called == [1]
    lin(torch.randn(1, 5, lin.in_features))  # 5 rows: the float GEMM
    assert called == [1]


def test_unknown_path_refused():
    lin = _int8_model().model.model.layers[0].mlp.up_proj
    with pytest.raises(ValueError, match="unknown path"):
        set_paths(lin, "int4pack", "int8pack")
    assert Int4Linear.PATHS == ("int4pack",)


def test_choice_is_recorded_and_replays_on_a_fresh_copy():
    h = _int8_model()
    fresh = copy.deepcopy(h.model)
    policy = choose_policy(h.model, prompt_tokens=16, batch_sizes=[1, 2])
    assert policy["float_dtype"] in ("bfloat16", "float32") and policy["rows_threshold"] == 2
    kinds = {t["what"] for t in policy["trials"]}
    assert "float_dtype" in kinds and any(k.startswith("int8_linear:") for k in kinds)
    for t in policy["trials"]:  # every candidate timed, or rejected with the reason
        assert ("decode_ms" in t and t["decode_ms"] > 0) or t.get("rejected")
        assert t["kl_vs_reference"] >= 0
    for key, p in policy["paths"].items():
        assert p["decode"] in Int8Linear.PATHS and p["prefill"] in Int8Linear.PATHS
        assert key.startswith("int8_linear:")
    apply_policy(fresh, policy)
    for (n, a), (_, b) in zip(h.model.named_modules(), fresh.named_modules(), strict=True):
        if isinstance(a, Int8Linear):
            assert (a.path_small, a.path_large) == (b.path_small, b.path_large), n
    ids = torch.arange(10).unsqueeze(0)
    with torch.inference_mode():
        torch.testing.assert_close(h.model(input_ids=ids).logits, fresh(input_ids=ids).logits)
    assert "float parts in" in describe(policy)


def test_float32_parts_keep_weight_storage():
    """The float32 candidate changes the residual stream, not the bytes of float weights."""
    h = tiny_handle(seed=2)
    run_stage(
        h, RTNConfig(method="rtn", bits=4, group_size=32, targets=["Linear"], ignore=["lm_head"])
    )
    emb = h.model.get_input_embeddings()
    assert emb.weight.dtype == torch.bfloat16
    apply_policy(h.model, {"float_dtype": "float32", "rows_threshold": 1, "paths": {}})
    assert emb.weight.dtype == torch.bfloat16 and h.model.lm_head.weight.dtype == torch.bfloat16
    norm = h.model.model.norm.weight
    assert norm.dtype == torch.float32
    out = h.model(input_ids=torch.arange(6).unsqueeze(0)).logits
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_nothing_to_choose_for_a_float32_model():
    h = tiny_handle()
    assert choose_policy(h.model, prompt_tokens=8) is None
    assert describe(None).startswith("no choice")
    assert isinstance(h.model.lm_head, nn.Linear)

"""compress.profile.sparse_kernels: torch semi-structured 2:4 kernels, when the device has
them, and the kernel choice that times them before profiling (CPU: nothing changes)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import compress.profile.kernels as kernels
import compress.profile.sparse_kernels as sk
from compress.methods import run_stage
from compress.methods.magnitude import MagnitudeConfig
from compress.profile.kernels import apply_policy, choose_policy, describe
from compress.testing import tiny_handle

IDS = torch.randint(4, 100, (2, 48), generator=torch.Generator().manual_seed(0))


def _pruned(structure: str = "2:4", dtype: str | None = None, device: str = "cpu"):
    h = tiny_handle(seed=2, initializer_range=0.1)
    h.model.to(device)
    h.device = device
    cfg = {"mask_structure": structure} if ":" in structure else {"sparsity": 0.5}
    run_stage(h, MagnitudeConfig(compute_dtype=dtype, **cfg))
    return h


def _decoder_names(model) -> set[str]:
    return {
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.startswith("model.layers.")
    }


def _fake_gpu(monkeypatch, capability=(9, 0)):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)


# -- support and its reasons -----------------------------------------------------------------


def test_no_support_on_cpu_says_why():
    ok, why = sk.semi_structured_support("cpu", torch.float16)
    assert not ok and why.startswith("not CUDA") and "cpu" in why


def test_reasons_on_a_cuda_device(monkeypatch):
    _fake_gpu(monkeypatch, (7, 5))
    ok, why = sk.semi_structured_support("cuda", torch.float16)
    assert not ok and "compute capability 7.5 < 8.0" in why
    _fake_gpu(monkeypatch, (9, 0))
    ok, why = sk.semi_structured_support("cuda", torch.float32)
    assert not ok and "dtype float32 is not float16/bfloat16" in why
    for dt in (torch.float16, "bfloat16", None):
        ok, why = sk.semi_structured_support("cuda", dt)
        assert ok and "sm_90" in why and sk.backend() in why
    monkeypatch.delattr(torch.sparse, "to_sparse_semi_structured")
    ok, why = sk.semi_structured_support("cuda", torch.float16)
    assert not ok and "lacks torch.sparse.to_sparse_semi_structured" in why


def test_no_cuda_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, why = sk.semi_structured_support("cuda:0", torch.float16)
    assert not ok and "no CUDA device" in why


def test_apply_on_cpu_refuses_with_the_reason():
    h = _pruned(dtype="float16")
    with pytest.raises(RuntimeError, match="unavailable: not CUDA"):
        sk.apply_semi_structured(h.model, "cpu")
    assert sk.semi_structured_layers(h.model) == [] and sk.in_use(h.model) is None


# -- which layers qualify (pure, CPU) ---------------------------------------------------------


def test_shape_refusal_follows_torch_constraints():
    limits = sk._sparse_class()._DTYPE_SHAPE_CONSTRAINTS[torch.float16]
    r, c = limits.sparse_min_rows, limits.sparse_min_cols
    assert sk.shape_refusal((4 * r, 4 * c), torch.float16) is None
    assert "shape" in sk.shape_refusal((r // 2, 4 * c), torch.float16)
    assert "shape" in sk.shape_refusal((4 * r, 4 * c + 4), torch.float16)
    assert "3-D" in sk.shape_refusal((2, 3, 4), torch.float16)


def test_plan_lists_2_4_half_linears_and_says_why_others_stay_dense():
    h = _pruned(dtype="float16")
    ok, skipped = sk.plan_semi_structured(h.model)
    assert set(ok) == _decoder_names(h.model)
    # lm_head (tied to the embedding, whose padding row is 0) has zeros but is not 2:4
    assert set(skipped) == {"lm_head"} and "not 2:4" in skipped["lm_head"]
    m = h.model
    w24 = m.model.layers[0].mlp.down_proj.weight.detach()
    m.small = nn.Linear(w24.shape[1], 8, bias=False).half()  # too few rows for the kernel
    m.fp32 = nn.Linear(w24.shape[1], w24.shape[0], bias=False)
    m.unstructured = nn.Linear(w24.shape[1], w24.shape[0], bias=False).half()
    m.tied = nn.Linear(w24.shape[1], w24.shape[0], bias=False).half()
    m.tied_twin = nn.Linear(w24.shape[1], w24.shape[0], bias=False).half()
    with torch.no_grad():
        m.small.weight.copy_(w24[:8])
        m.fp32.weight.copy_(w24.float())
        m.unstructured.weight.copy_(w24)
        m.unstructured.weight[0, :4] = 1.0
        m.tied.weight.copy_(w24)
    m.tied_twin.weight = m.tied.weight
    ok, skipped = sk.plan_semi_structured(m)
    assert set(ok) == _decoder_names(m)
    assert "shape 8x" in skipped["small"]
    assert "dtype float32" in skipped["fp32"]
    assert "not 2:4" in skipped["unstructured"]
    assert "shared (tied)" in skipped["tied"]


# -- the kernel choice: a candidate on CUDA only ----------------------------------------------


def test_cpu_policy_unchanged_for_a_2_4_model():
    h = _pruned()  # float32, CPU: nothing to choose, as before
    assert kernels._sparse_candidates(h.model, "cpu") == ([], {})
    assert choose_policy(h.model, prompt_tokens=8, batch_sizes=[1]) is None


def _fake_convert(calls: list, fail: bool = False):
    """Stands in for the CUDA conversion on CPU: a new Parameter holding the same values."""

    def convert(model, device, *, names=None, skipped=None):
        if fail:
            raise RuntimeError("cuSPARSELt: not supported on this device\nmore")
        for n in names:
            lin = model.get_submodule(n)
            lin.weight = nn.Parameter(lin.weight.detach().clone(), requires_grad=False)
        calls.append(list(names))
        return list(names)

    return convert


def test_choice_times_semi_structured_and_restores_dense(monkeypatch):
    h = _pruned(dtype="bfloat16")
    plan = sk.plan_semi_structured(h.model)
    monkeypatch.setattr(kernels, "_sparse_candidates", lambda m, d: plan)
    calls: list = []
    monkeypatch.setattr(sk, "apply_semi_structured", _fake_convert(calls))
    before = {n: h.model.get_submodule(n).weight for n in plan[0]}
    policy = choose_policy(h.model, prompt_tokens=8, batch_sizes=[1])
    semi = policy["semi_structured"]
    assert calls == [plan[0]] and semi["layers"] == plan[0] and set(semi["skipped"]) == {"lm_head"}
    assert isinstance(semi["used"], bool) and semi["backend"] in ("cuSPARSELt", "CUTLASS")
    rows = [t for t in policy["trials"] if t["what"] == "semi_structured"]
    assert [r["candidate"] for r in rows] == ["dense", "2:4"]
    assert all(r["decode_ms"] > 0 and r["prefill_ms"] > 0 for r in rows)
    for n, w in before.items():  # the in-process model keeps its dense weights
        assert h.model.get_submodule(n).weight is w
    assert "2:4" in describe(policy)
    # replay: converted in the profiling process only when the choice was `used`
    calls.clear()
    fresh = copy.deepcopy(h.model)
    apply_policy(fresh, policy)
    assert calls == ([plan[0]] if semi["used"] else [])
    apply_policy(fresh, dict(policy, semi_structured=dict(semi, used=True)))
    assert calls[-1] == plan[0]


def test_choice_records_a_kernel_that_fails(monkeypatch):
    h = _pruned(dtype="bfloat16")
    plan = sk.plan_semi_structured(h.model)
    monkeypatch.setattr(kernels, "_sparse_candidates", lambda m, d: plan)
    monkeypatch.setattr(sk, "apply_semi_structured", _fake_convert([], fail=True))
    policy = choose_policy(h.model, prompt_tokens=8, batch_sizes=[1])
    semi = policy["semi_structured"]
    assert semi["used"] is False and semi["decided"].startswith("failed: cuSPARSELt")
    assert "2:4 Linear layers kept dense (failed" in describe(policy)


def test_describe():
    base = {"float_dtype": "float16", "rows_threshold": 1, "paths": {}}
    used = {"used": True, "layers": ["a", "b"], "backend": "cuSPARSELt", "decided": "faster"}
    assert "2:4 semi-structured sparse kernels (cuSPARSELt) on 2 Linear layers" in describe(
        dict(base, semi_structured=used)
    )
    assert describe(base) == "float parts in float16"


# -- on a GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_2_4_model_runs_semi_structured_and_matches_dense(dtype):
    ok, why = sk.semi_structured_support("cuda", dtype)
    if not ok:
        pytest.skip(why)
    h = _pruned(dtype=dtype, device="cuda")
    model = h.model
    ids = IDS.cuda()
    with torch.inference_mode():
        ref = model(ids).logits.float()
    done = sk.apply_semi_structured(model, "cuda")
    assert set(done) == _decoder_names(model)
    assert all(sk.is_semi_structured(model.get_submodule(n).weight) for n in done)
    assert sk.in_use(model).startswith("torch semi-structured 2:4 sparse kernels")
    with torch.inference_mode():
        out = model(ids).logits.float()
        one = model(ids[:1, :1]).logits.float()  # a decode-sized call (1 row, padded)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(one, ref[:1, :1], rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_cuda_layers_the_kernel_refuses_stay_dense():
    ok, why = sk.semi_structured_support("cuda", torch.float16)
    if not ok:
        pytest.skip(why)
    lin = nn.Linear(256, 8, bias=False).half().cuda()  # 8 rows: below every backend's minimum
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([1.0, 0.0, 2.0, 0.0]).repeat(8, 64))
    model = nn.Sequential(lin)
    skipped: dict[str, str] = {}
    assert sk.apply_semi_structured(model, "cuda", skipped=skipped) == []
    assert "shape 8x256" in skipped["0"] and not sk.is_semi_structured(lin.weight)


@pytest.mark.gpu
def test_cuda_choice_and_replay_in_a_fresh_copy():
    ok, why = sk.semi_structured_support("cuda", torch.float16)
    if not ok:
        pytest.skip(why)
    h = _pruned(dtype="float16", device="cuda")
    fresh = copy.deepcopy(h.model)
    policy = choose_policy(h.model, prompt_tokens=16, batch_sizes=[1], device="cuda")
    semi = policy["semi_structured"]
    assert set(semi["layers"]) == _decoder_names(h.model)
    assert sk.semi_structured_layers(h.model) == []  # in-process model stays dense
    sparse_row = [t for t in policy["trials"] if t["candidate"] == "2:4"][-1]
    assert sparse_row.get("kl_vs_reference", 1.0) <= kernels.MAX_KL, sparse_row
    apply_policy(fresh, dict(policy, semi_structured=dict(semi, used=True)))
    assert set(sk.semi_structured_layers(fresh)) == set(semi["layers"])
    with torch.inference_mode():
        torch.testing.assert_close(
            fresh(IDS.cuda()).logits.float(), h.model(IDS.cuda()).logits.float(),
            rtol=2e-2, atol=2e-2,
        )  # fmt: skip

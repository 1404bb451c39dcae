"""Every torch-side method on CUDA, on the tiny Llama: the kernels it names run on the GPU,
outputs stay close to the float model, weights shrink, and the saved model reloads on CUDA.

Marked `gpu`: skipped where torch sees no CUDA device (conftest), run on a GPU machine.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from compress.profile.memory import weight_bytes
from compress.quant.serialize import load_compressed, save_compressed
from compress.testing import kl_per_token, tiny_calibration, tiny_handle

pytestmark = pytest.mark.gpu
DEVICE = "cuda"  # the test logic was checked on CPU by swapping this name

IDS = torch.randint(4, 100, (2, 48), generator=torch.Generator().manual_seed(0))
SPREAD = {"initializer_range": 0.1}
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def _cuda_handle(seed: int = 0):
    h = tiny_handle(seed, **SPREAD)
    h.model.to(DEVICE)
    h.device = DEVICE
    return h


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS.to(next(model.parameters()).device)).logits.float().cpu()


def _stages():
    from compress.methods.awq import AWQConfig
    from compress.methods.gptq import GPTQConfig
    from compress.methods.rtn import RTNConfig
    from compress.methods.smoothquant import SmoothQuantConfig

    cases = [
        ("rtn-int8", [RTNConfig(bits=8, ignore=[])], "Int8Linear", 0.35, 5e-3),
        (
            "rtn-int4",
            [
                RTNConfig(bits=4, group_size=32, symmetric=False),
                RTNConfig(bits=8, targets=["lm_head"], ignore=[]),
            ],
            "Int4Linear",
            0.2,
            0.1,
        ),
        ("gptq-int4", [GPTQConfig(bits=4, group_size=32, act_order=True)], "Int4Linear", 0.6, 0.1),
        ("awq-int4", [AWQConfig(group_size=32)], "Int4Linear", 0.6, 0.1),
        ("smoothquant", [SmoothQuantConfig(alpha=0.5)], "W8A8Linear", 0.8, 2e-2),
    ]
    if HAS_BNB:
        from compress.methods.bnb import BnbConfig

        cases += [
            ("bnb-nf4", [BnbConfig(quant_type="nf4")], "BnbLinear", 0.6, 0.2),
            ("bnb-int8", [BnbConfig(quant_type="int8")], "BnbLinear", 0.8, 2e-2),
        ]
    return cases


@pytest.fixture(scope="module")
def reference():
    h = tiny_handle(**SPREAD)
    far = kl_per_token(_logits(h.model), _logits(tiny_handle(seed=1, **SPREAD).model))
    return {"bytes": weight_bytes(h.model), "logits": _logits(h.model), "far": far}


@pytest.mark.parametrize(
    "name,stages,cls,max_ratio,max_kl", _stages(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_method_on_cuda(reference, tmp_path, name, stages, cls, max_ratio, max_kl):
    from compress.methods import needs_calibration, run_stage

    h = _cuda_handle()
    for cfg in stages:
        fn = run_stage
        info = fn(h, cfg, tiny_calibration()) if needs_calibration(cfg) else fn(h, cfg)
    quantized = [m for m in h.model.modules() if type(m).__name__ == cls]
    assert quantized, f"{name}: no {cls} in the model"
    for m in quantized:  # the quantized storage lives on the GPU
        assert all(t.device.type == DEVICE for t in m.buffers() if t.numel()), name
    assert all(p.device.type == DEVICE for p in h.model.parameters())
    ratio = weight_bytes(h.model) / reference["bytes"]
    assert ratio < max_ratio, (name, ratio)
    kl = kl_per_token(reference["logits"], _logits(h.model))
    assert kl < max_kl and kl < reference["far"] / 10, (name, kl, reference["far"])
    assert info.summary
    # saved on the GPU, reloaded on the GPU: same logits
    save_compressed(h, tmp_path / "m")
    back = load_compressed(tmp_path / "m", device=DEVICE)
    assert torch.allclose(_logits(back.model), _logits(h.model), atol=1e-3, rtol=1e-3), name


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_pruning_then_gptq_on_cuda(method):
    """Calibrated pruning runs on the GPU (2:4), and gptq with preserve_zeros keeps the mask
    in int4 storage on the GPU."""
    from torch import nn

    from compress.methods import run_stage
    from compress.methods.gptq import GPTQConfig
    from compress.methods.sparsegpt import SparseGPTConfig
    from compress.methods.wanda import WandaConfig

    h = _cuda_handle()
    cfg = (WandaConfig if method == "wanda" else SparseGPTConfig)(mask_structure="2:4")
    info = run_stage(h, cfg, tiny_calibration())
    assert info.details["sparsity"] == pytest.approx(0.5, abs=0.01)
    masks = {
        n: (m.weight == 0)
        for n, m in h.model.named_modules()
        if isinstance(m, nn.Linear) and n.startswith("model.layers.")
    }
    assert all(m.device.type == DEVICE for m in masks.values())
    run_stage(h, GPTQConfig(bits=4, group_size=32, preserve_zeros=True), tiny_calibration())
    for n, mask in masks.items():
        mod = h.model.get_submodule(n)
        assert type(mod).__name__ == "Int4Linear"
        with torch.no_grad():  # the kernel's effective weight: W^T = module(I)
            eye = torch.eye(mod.in_features, dtype=torch.bfloat16, device=DEVICE)
            w = mod(eye).float().t()
        assert (w[mask] == 0).all(), n

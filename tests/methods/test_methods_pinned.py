"""Refactors leave the numbers alone: rtn / gptq / awq / sparsegpt store, for the tiny model,
exactly the tensors pinned in tests/data/pinned_methods.safetensors (written by
tests/data/pin_methods.py from the code before the stage-contract change, issue 8).

Bit-identical where the host has the CPU features the pins were made on. The calibrated
solves run float matmuls whose last bits depend on the vector unit, so on another kind of
host the check is that the same tensors come out with few of their elements moved, by float
rounding: float values never more than 10% and at most 10% of them beyond 1% relative;
integer codes (two int4 codes per byte unpacked) never more than one grid step and at most 5%
of them. GPTQ propagates each rounding flip into the columns after it (and into the group
scales computed from the updated weights), so on an Intel Xeon without the pins' features
about 2% of its codes moved by one step and 6% of a layer's scales by 1-5% (measured
2026-12-01; the earlier 1% limit on every tensor failed there); a changed algorithm moves
codes by several steps and many more of them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from compress.environment import cpu_features

DATA = Path(__file__).resolve().parents[1] / "data"
sys.path.insert(0, str(DATA))
from pin_methods import CASES, stored  # noqa: E402

with safe_open(str(DATA / "pinned_methods.safetensors"), "pt") as f:
    PINNED = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    META = f.metadata()
SAME_HOST = json.loads(META["cpu_features"]) == cpu_features()


def _codes(t: torch.Tensor) -> torch.Tensor:
    """uint8 tensors hold two int4 codes per byte: compare the codes, not the bytes."""
    if t.dtype == torch.uint8:
        return torch.stack([(t & 15).int(), (t >> 4).int()])
    return t.int()


def _moved(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.is_floating_point():
        rel = (a.float() - b.float()).abs() / (b.float().abs() + 1e-6)
        assert rel.max() <= 0.1, "a value moved by more than 10%: not float rounding"
        close = rel <= 1e-2
    else:
        step = (_codes(a) - _codes(b)).abs()
        assert step.max() <= 1, "a code moved by more than one grid step: not float rounding"
        close = step == 0
    return 1.0 - close.float().mean().item()


@pytest.mark.parametrize("name", list(CASES))
def test_method_stores_the_pinned_tensors(name):
    now = stored(name)
    pinned = {k.split("/", 1)[1]: v for k, v in PINNED.items() if k.startswith(f"{name}/")}
    assert pinned and set(now) == set(pinned)
    for key, ref in pinned.items():
        assert now[key].dtype == ref.dtype and now[key].shape == ref.shape, key
        if SAME_HOST:
            assert torch.equal(now[key], ref), key
        else:
            limit = 0.1 if ref.is_floating_point() else 0.05
            assert _moved(now[key], ref) <= limit, key

"""Writes tests/data/pinned_methods.safetensors: what rtn / gptq / awq / sparsegpt store for
the tiny test model, so tests/methods/test_methods_pinned.py can check that refactors leave
the numbers alone. Run from a checkout whose numbers are the reference:

    python tests/data/pin_methods.py OUT.safetensors
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from compress.methods.awq import AWQConfig
from compress.methods.gptq import GPTQConfig
from compress.methods.rtn import RTNConfig
from compress.methods.sparsegpt import SparseGPTConfig
from compress.quant.serialize import save_compressed
from compress.testing import tiny_calibration, tiny_handle

CASES = {
    "rtn": RTNConfig(bits=4, group_size=32, symmetric=False, ignore=[]),
    "rtn8": RTNConfig(bits=8, ignore=[]),
    "gptq": GPTQConfig(bits=4, group_size=32),
    "awq": AWQConfig(group_size=32),
    "sparsegpt": SparseGPTConfig(sparsity=0.5),
}


def run(handle, cfg, calib):
    try:
        from compress.methods import run_stage  # the stage contract (issue 8)
    except ImportError:  # the code before it
        import importlib

        return importlib.import_module(f"compress.methods.{cfg.method}").apply(handle, cfg, calib)
    return run_stage(handle, cfg, calib).model_dump(mode="json")


def stored(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    h = tiny_handle(initializer_range=0.1)
    h.stages.append(run(h, CASES[name], tiny_calibration(16, 64)))
    with tempfile.TemporaryDirectory() as tmp:
        out = save_compressed(h, Path(tmp) / "m")
        return load_file(out / "model.safetensors")


def main() -> None:
    tensors = {f"{name}/{k}": v for name in CASES for k, v in stored(name).items()}
    from compress.environment import cpu_features

    meta = {"cpu_features": json.dumps(cpu_features()), "torch": torch.__version__}
    save_file(tensors, sys.argv[1], metadata=meta)
    print(f"{len(tensors)} tensors -> {sys.argv[1]}")


if __name__ == "__main__":
    main()

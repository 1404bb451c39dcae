"""What the ONNX export, the graph rewrites and the `onnx_int8` method share (no heavy imports):
the install hint, the MatMulNBits accuracy level, the export wrapper's name prefix, and the
check that an optional package is installed."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL = "pip install onnx onnxruntime onnxscript  (or: pip install -e .[onnx])"
NBITS_ACCURACY = 4  # MatMulNBits accuracy_level 4: int8 activations, int32 accumulation
WRAPPER_PREFIX = "model."  # the export wrapper holds the HF model as `self.model`


def require_package(module: str) -> ModuleType:
    """Import `module` or raise a BadInput saying how to install it."""
    from compress.errors import BadInput

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BadInput(
            f"onnx_int8 needs the '{module.split('.')[0]}' package ({e}).", fix=INSTALL
        ) from None

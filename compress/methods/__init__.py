"""The METHODS table: one line per method. Configs import no torch; `apply` functions import
their heavy dependencies when called, so `compress validate` and `--help` stay light."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from compress.methods.awq import AWQConfig
from compress.methods.bnb import BnbConfig
from compress.methods.dynamic_int8 import DynamicInt8Config
from compress.methods.gptq import GPTQConfig
from compress.methods.magnitude import MagnitudeConfig
from compress.methods.onnx_int8 import OnnxInt8Config
from compress.methods.rtn import RTNConfig
from compress.methods.smoothquant import SmoothQuantConfig
from compress.methods.sparsegpt import SparseGPTConfig
from compress.methods.wanda import WandaConfig

#: method name -> (config class, module holding `apply(handle, config, calibration)`)
METHODS: dict[str, tuple[type, str]] = {
    "rtn": (RTNConfig, "compress.methods.rtn"),
    "dynamic_int8": (DynamicInt8Config, "compress.methods.dynamic_int8"),
    "gptq": (GPTQConfig, "compress.methods.gptq"),
    "awq": (AWQConfig, "compress.methods.awq"),
    "smoothquant": (SmoothQuantConfig, "compress.methods.smoothquant"),
    "bnb": (BnbConfig, "compress.methods.bnb"),
    "onnx_int8": (OnnxInt8Config, "compress.methods.onnx_int8"),
    "magnitude": (MagnitudeConfig, "compress.methods.magnitude"),
    "wanda": (WandaConfig, "compress.methods.wanda"),
    "sparsegpt": (SparseGPTConfig, "compress.methods.sparsegpt"),
}

StageConfig = Annotated[
    RTNConfig
    | DynamicInt8Config
    | GPTQConfig
    | AWQConfig
    | SmoothQuantConfig
    | BnbConfig
    | OnnxInt8Config
    | MagnitudeConfig
    | WandaConfig
    | SparseGPTConfig,
    Field(discriminator="method"),
]


def method_names() -> list[str]:
    return list(METHODS)


def config_class(name: str) -> type | None:
    entry = METHODS.get(name)
    return entry[0] if entry else None


def get_apply(name: str) -> Callable[..., dict[str, Any]]:
    return importlib.import_module(METHODS[name][1]).apply


def needs_calibration(config: Any) -> bool:
    return bool(getattr(config, "needs_calibration", False))

"""Where a run happened: versions, machine, device."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import platform
import re
import sys

from compress.errors import BadInput


def check_device(device: str) -> None:
    """`cpu`, `cuda` or `cuda:N` that exists here; anything else is a BadInput."""
    import torch

    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise BadInput(f"Unknown device '{device}'.", fix="Use auto, cpu, cuda or cuda:N.")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadInput(
                f"Device '{device}' requested but no CUDA device is visible.",
                fix="Use --device cpu or --device auto.",
            )
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise BadInput(f"Device '{device}' does not exist ({torch.cuda.device_count()} GPUs).")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    return device


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in (
        "compress",
        "torch",
        "transformers",
        "gguf",
        "safetensors",
        "numpy",
        "datasets",
        "accelerate",
        "tokenizers",
        "pydantic",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


#: CPU flags that decide which kernels are fast (kernel speed differs a lot between hosts)
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16")


def cpu_features() -> list[str]:
    """The kernel-relevant flags /proc/cpuinfo lists for this CPU (empty where unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [x for x in KERNEL_FLAGS if x in flags]
    except OSError:
        pass
    return []


def environment(device: str) -> dict:
    import torch

    env = {
        "device": device,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "cuda_available": torch.cuda.is_available(),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda_version"] = torch.version.cuda
    return env

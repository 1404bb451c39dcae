"""Read named tensors from a folder of safetensors files without loading the rest.

A folder holds `model.safetensors`, or shards listed by `model.safetensors.index.json`, or
several `*.safetensors` files; `TensorFiles` maps every tensor name to its file (read from the
file headers only) and `read(names)` memory-maps just those files and copies just those
tensors out, so reading one decoder layer costs about that layer's bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path

import torch

INDEX = "model.safetensors.index.json"
#: bytes per element of the safetensors dtypes a model uses
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


def header(path: Path) -> dict[str, dict]:
    """A safetensors file's header: {name: {dtype, shape, data_offsets}} (metadata dropped)."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        head = json.loads(f.read(n))
    head.pop("__metadata__", None)
    return head


class TensorFiles:
    """Every tensor of a safetensors folder: where it is, its dtype and shape."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{self.folder}: no safetensors files")
        self.where: dict[str, str] = {}
        self.info: dict[str, dict] = {}
        for name in files:
            for key, meta in header(self.folder / name).items():
                self.where[key] = name
                self.info[key] = meta

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def nbytes(self, key: str) -> int:
        meta = self.info[key]
        n = 1
        for d in meta["shape"]:
            n *= d
        return n * DTYPE_BYTES.get(meta["dtype"], 4)

    def read(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """The named tensors, copied out of their files (each file opened once)."""
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.where[k], []).append(k)
        out: dict[str, torch.Tensor] = {}
        for name, ks in by_file.items():
            with safe_open(str(self.folder / name), framework="pt") as f:
                for k in ks:
                    out[k] = f.get_tensor(k)  # a copy: the map is closed when the file is
        return out

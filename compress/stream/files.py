"""Read named tensors from a folder of safetensors files without loading the rest.

A folder holds `model.safetensors`, or shards listed by `model.safetensors.index.json`, or
several `*.safetensors` files; `TensorFiles` maps every tensor name to its file (read from the
file headers only) and `read(names)` reads just those tensors' bytes (plain reads, no memory
map), so reading one decoder layer costs about that layer's bytes.
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


TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def header(path: Path) -> tuple[dict[str, dict], int]:
    """A safetensors file's header {name: {dtype, shape, data_offsets}} (metadata dropped) and
    where its data starts."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        head = json.loads(f.read(n))
    head.pop("__metadata__", None)
    return head, 8 + n


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
        self.data_start: dict[str, int] = {}
        for name in files:
            head, self.data_start[name] = header(self.folder / name)
            for key, meta in head.items():
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

    def read(
        self, keys: Iterable[str], dtypes: dict[str, torch.dtype] | None = None
    ) -> dict[str, torch.Tensor]:
        """The named tensors, read from their files into fresh memory, each cast to
        `dtypes[key]` (a big one in row slices). Plain reads, not a memory map: mapped pages a
        process touched count in its RSS until unmapped, which would double a block's cost."""
        dtypes = dtypes or {}
        by_file: dict[str, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.where[k], []).append(k)
        out: dict[str, torch.Tensor] = {}
        for name, ks in by_file.items():
            with (self.folder / name).open("rb", buffering=0) as f:
                for k in ks:
                    off = self.data_start[name] + self.info[k]["data_offsets"][0]
                    out[k] = _read_one(f, off, self.info[k], dtypes.get(k))
        return out


#: elements per slice when a tensor is read and cast in pieces
SLICE = 1 << 24


def _read_one(f, offset: int, meta: dict, dtype: torch.dtype | None) -> torch.Tensor:
    src = TORCH_DTYPES[meta["dtype"]]
    shape = list(meta["shape"])
    dtype = dtype or src
    out = torch.empty(shape, dtype=dtype)
    n = out.numel()
    if n == 0:
        return out
    f.seek(offset)
    if dtype == src:
        _fill(f, out.reshape(-1))
        return out
    rows = max(1, SLICE // max(1, n // shape[0])) if shape else 1
    flat_rows = out.reshape(shape[0], -1) if shape else out.reshape(1, 1)
    for r0 in range(0, flat_rows.shape[0], rows):
        piece = torch.empty_like(flat_rows[r0 : r0 + rows], dtype=src)
        _fill(f, piece.reshape(-1))
        flat_rows[r0 : r0 + rows] = piece.to(dtype)
    return out


def _fill(f, flat: torch.Tensor) -> None:
    """Read exactly flat's bytes from f's position into it."""
    buf = memoryview(flat.view(torch.uint8).numpy()).cast("B")
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])
        if not n:
            raise OSError(f"{f.name}: file ends inside a tensor")
        got += n

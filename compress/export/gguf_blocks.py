"""Our integer grids as GGUF block tensors, as pure functions (numpy/torch in, bytes out).

Every quantized weight this package holds is, per group of input features,

    w = v * scale + zero          v = code - offset, a small signed integer

(int4 modules: codes 0..15, offset 8; int8 modules: signed codes, offset 0, zero 0). GGUF's
block formats, 32 weights per block with fp16 parameters, are the same kind of grid:

    Q8_0   w = d * q               q int8
    Q4_0   w = d * (q - 8)         q 0..15
    Q4_1   w = d * q + m           q 0..15

so a grid whose groups are whole blocks (group size a multiple of 32) maps onto one of them
with the SAME integer codes: d = scale, and for Q4_1 m = zero - 8 * scale. GPTQ's or AWQ's
choices are carried into llama.cpp unchanged; the only change is rounding d and m to fp16,
which `block_error` measures. A grid that fits none (asymmetric 8-bit, groups of 16) is
re-quantised from its dequantised float weights by gguf's own quantiser, with the error
stated the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType as QT
from gguf import quants

BLOCK = 32


@dataclass
class Grid:
    """One weight in our integer form. `values` are the signed integers v (int16)."""

    values: torch.Tensor  # [out, in]
    scale: torch.Tensor  # [out, groups]
    zero: torch.Tensor  # [out, groups]

    @property
    def group_size(self) -> int:
        return self.values.shape[1] // self.scale.shape[1]

    def dequantize(self) -> torch.Tensor:
        out_f, in_f = self.values.shape
        g = self.scale.shape[1]
        v = self.values.float().reshape(out_f, g, in_f // g)
        w = v * self.scale.float()[..., None] + self.zero.float()[..., None]
        return w.reshape(out_f, in_f)

    def permute_rows(self, order: torch.Tensor) -> Grid:
        return Grid(self.values[order], self.scale[order], self.zero[order])


def grid_from_int4(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> Grid:
    """Int4Linear's portable form: codes 0..15 with w = (code - 8) * scale + zero."""
    return Grid(codes.to(torch.int16) - 8, scale.float(), zero.float())


def grid_from_int8(qweight: torch.Tensor, scale: torch.Tensor) -> Grid:
    """Int8Linear / DynamicInt8Linear: signed codes, one scale per row (or per tensor)."""
    out_f = qweight.shape[0]
    s = scale.float().reshape(-1, 1).expand(out_f, 1) if scale.numel() in (1, out_f) else None
    if s is None:
        raise ValueError(f"int8 scale of {scale.numel()} values for {out_f} rows")
    return Grid(qweight.to(torch.int16), s.contiguous(), torch.zeros_like(s))


def _per_block(t: torch.Tensor, group_size: int) -> np.ndarray:
    """[out, groups] -> [out * in / 32, 1] float32, each group's value repeated per block."""
    return t.float().repeat_interleave(group_size // BLOCK, dim=1).reshape(-1, 1).numpy()


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """[blocks, 32] codes 0..15 -> [blocks, 16] bytes: element j low nibble, j + 16 high."""
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


def integer_offset(grid: Grid) -> torch.Tensor | None:
    """k with zero == k * scale exactly in every group, or None (Q4_0 needs such a zero)."""
    k = torch.where(grid.scale != 0, grid.zero / grid.scale, torch.zeros_like(grid.zero)).round()
    return k if bool((k * grid.scale == grid.zero).all()) else None


def choose_type(grid: Grid) -> tuple[QT, str]:
    """The GGUF type this grid maps onto exactly, or the one it is re-quantised to, and why."""
    g = grid.group_size
    if g % BLOCK:
        return QT.Q8_0, f"group size {g} is not a multiple of 32: re-quantised to Q8_0"
    vmin, vmax = int(grid.values.min()), int(grid.values.max())
    k = integer_offset(grid)
    if k is not None and int(k.min()) + vmin >= -8 and int(k.max()) + vmax <= 7:
        return QT.Q4_0, "exact: same codes, fp16 scales"
    if vmin >= -8 and vmax <= 7:
        return QT.Q4_1, "exact: same codes, fp16 scales and minimums"
    if k is not None and bool((k == 0).all()) and vmin >= -128 and vmax <= 127:
        return QT.Q8_0, "exact: same codes, fp16 scales"
    return QT.Q8_0, "no GGUF block format holds this grid: re-quantised to Q8_0"


def to_blocks(grid: Grid, qtype: QT) -> np.ndarray:
    """The GGUF bytes of `grid` as `qtype`: [out, bytes per row] uint8, blocks in row order.

    Only the exact mappings of `choose_type`; `requantize` covers the rest."""
    out_f, in_f = grid.values.shape
    g = grid.group_size
    v = grid.values.reshape(-1, BLOCK).numpy().astype(np.int32)
    d = _per_block(grid.scale, g)
    if qtype == QT.Q8_0:
        if bool((grid.zero != 0).any()):
            raise ValueError("Q8_0 holds symmetric grids only (zero == 0)")
        blocks = np.concatenate([_f16_bytes(d), v.astype(np.int8).view(np.uint8)], axis=1)
    elif qtype == QT.Q4_0:
        k = integer_offset(grid)
        if k is None:
            raise ValueError("Q4_0 needs zero == k * scale with integer k in every group")
        q = v + _per_block(k, g).astype(np.int32) + 8
        if q.min() < 0 or q.max() > 15:
            raise ValueError("codes fall outside Q4_0's 0..15")
        blocks = np.concatenate([_f16_bytes(d), _nibbles(q.astype(np.uint8))], axis=1)
    elif qtype == QT.Q4_1:
        q = v + 8
        if q.min() < 0 or q.max() > 15:
            raise ValueError("codes fall outside Q4_1's 0..15")
        m = _per_block(grid.zero - 8 * grid.scale, g)
        blocks = np.concatenate([_f16_bytes(d), _f16_bytes(m), _nibbles(q.astype(np.uint8))], 1)
    else:
        raise ValueError(f"no exact mapping onto {qtype.name}")
    return blocks.reshape(out_f, -1)


def requantize(weight: torch.Tensor, qtype: QT) -> np.ndarray:
    """gguf's own quantiser on a float weight (the fallback when no exact mapping exists)."""
    return quants.quantize(weight.float().numpy(), qtype)


def from_blocks(data: np.ndarray, qtype: QT) -> torch.Tensor:
    """Dequantise GGUF bytes with gguf's reference code (the ground truth for a mapping)."""
    return torch.from_numpy(np.ascontiguousarray(quants.dequantize(data, qtype)))


def block_error(reference: torch.Tensor, data: np.ndarray, qtype: QT) -> dict[str, float]:
    """How far the GGUF tensor is from the weight it stands for: max |dw| and ||dw|| / ||w||."""
    got = from_blocks(data, qtype).reshape(reference.shape)
    diff = (got - reference.float()).abs()
    norm = float(reference.float().norm()) or 1.0
    return {"max_abs": float(diff.max()), "relative": float(diff.norm()) / norm}


def encode(grid: Grid) -> tuple[np.ndarray, QT, str, dict[str, float]]:
    """Map (or re-quantise) one weight: bytes, GGUF type, how, and the error against `grid`."""
    qtype, how = choose_type(grid)
    reference = grid.dequantize()
    data = to_blocks(grid, qtype) if how.startswith("exact") else requantize(reference, qtype)
    return data, qtype, how, block_error(reference, data, qtype)

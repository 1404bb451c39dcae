"""Quantization grids as pure tensor functions (no modules, no hooks).

One convention for every integer format, the one the int4 "tinygemm" kernels use:

    w ~= (q - mid) * scale + zero        q in [0, 2**bits - 1], mid = 2**(bits - 1)

per group of `group_size` input features (or per output channel when group_size is None).
Symmetric grids have zero == 0; asymmetric (min/max) grids keep a float zero, so a min/max
grid such as GGUF's Q4_1 (w = d * q + m) is reproduced exactly: scale = d, zero = m + mid * d.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compress._config import INT4_GROUP_SIZES


@dataclass
class QuantizedTensor:
    q: torch.Tensor  # uint8 codes [out, in], values in [0, 2**bits - 1]
    scale: torch.Tensor  # [out, groups] float32
    zero: torch.Tensor  # [out, groups] float32
    bits: int
    group_size: int | None  # None = one group per output channel

    @property
    def groups(self) -> int:
        return self.scale.shape[1]

    def rows(self, sl: slice) -> QuantizedTensor:
        """The output rows `sl` (views, no copy)."""
        q, scale, zero = self.q[sl], self.scale[sl], self.zero[sl]
        return QuantizedTensor(q, scale, zero, self.bits, self.group_size)


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    out_f, in_f = w.shape
    g = in_f if group_size is None else group_size
    if in_f % g:
        raise ValueError(f"group_size {g} does not divide in_features {in_f}")
    return w.reshape(out_f, in_f // g, g)


def quantize(
    w: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = True
) -> QuantizedTensor:
    """Round-to-nearest onto the grid described in the module docstring."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    wg = _grouped(w.detach().float(), group_size)
    mid = 2 ** (bits - 1)
    qmax = 2**bits - 1
    if symmetric:
        amax = wg.abs().amax(-1)
        scale = (amax / (mid - 1)).clamp(min=torch.finfo(torch.float32).tiny)
        zero = torch.zeros_like(scale)
    else:
        lo, hi = wg.amin(-1), wg.amax(-1)
        scale = ((hi - lo) / qmax).clamp(min=torch.finfo(torch.float32).tiny)
        zero = lo + mid * scale
    q = torch.round((wg - zero[..., None]) / scale[..., None]) + mid
    q = q.clamp(0, qmax).to(torch.uint8).reshape(w.shape)
    return QuantizedTensor(q=q, scale=scale, zero=zero, bits=bits, group_size=group_size)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    out_f, in_f = qt.q.shape
    mid = 2 ** (qt.bits - 1)
    g = in_f // qt.groups
    qg = qt.q.reshape(out_f, qt.groups, g).float() - mid
    w = qg * qt.scale.float()[..., None] + qt.zero.float()[..., None]
    return w.reshape(out_f, in_f).to(dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[out, in] codes 0..15 -> [out, in/2] bytes, element 2j in the low nibble."""
    if q.shape[-1] % 2:
        raise ValueError("pack_int4 needs an even number of input features")
    q = q.to(torch.uint8)
    return (q[..., 0::2] & 0xF) | ((q[..., 1::2] & 0xF) << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    lo = packed & 0xF
    hi = (packed >> 4) & 0xF
    return torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def int8_codes(qt: QuantizedTensor) -> torch.Tensor:
    """Symmetric 8-bit codes as signed int8 (q - 128), the layout int8 matmul kernels take."""
    return (qt.q.to(torch.int16) - 128).to(torch.int8)


def max_abs_error(w: torch.Tensor, qt: QuantizedTensor) -> float:
    return float((dequantize(qt) - w.float()).abs().max())


def container_group(in_features: int) -> int | None:
    """Largest int4-kernel group size dividing `in_features` (per-channel grids go there)."""
    return next((g for g in sorted(INT4_GROUP_SIZES, reverse=True) if in_features % g == 0), None)


def as_int4(qt: QuantizedTensor) -> QuantizedTensor:
    """Re-express a 2/3/4-bit grid on the int4 kernel's grid (codes 0..15, mid 8), exactly:

        (q - mid_b) * s + z == (q - 8) * s + (z + (8 - mid_b) * s)

    so 2- and 3-bit codes sit unchanged in 4-bit containers (memory as int4). A per-channel
    grid becomes a grouped one with its scale/zero repeated over `container_group` groups.
    """
    if qt.bits > 4:
        raise ValueError(f"as_int4 takes 2..4-bit grids, got {qt.bits} bits")
    shift = 8 - 2 ** (qt.bits - 1)
    scale, zero = qt.scale, qt.zero + shift * qt.scale
    group = qt.group_size
    if group is None:
        in_f = qt.q.shape[1]
        group = container_group(in_f)
        if group is None:
            raise ValueError(f"no int4 group size in {INT4_GROUP_SIZES} divides in_features {in_f}")
        reps = in_f // group
        scale = scale.expand(-1, reps).contiguous()
        zero = zero.expand(-1, reps).contiguous()
    return QuantizedTensor(q=qt.q, scale=scale, zero=zero, bits=4, group_size=group)


def container_notes(bits: int, group_size: int | None) -> list[str]:
    """What `as_int4` did, in words for the report (empty for plain grouped int4 / int8)."""
    notes = []
    if bits in (2, 3):
        notes.append(f"{bits}-bit codes stored in 4-bit containers: memory as int4")
    if bits <= 4 and group_size is None:
        notes.append(
            "per-channel scales stored as int4 groups (largest of 256/128/64/32 dividing "
            "in_features) with the channel's scale repeated in each group (exact)"
        )
    return notes

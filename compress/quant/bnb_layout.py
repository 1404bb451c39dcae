"""bitsandbytes layouts and kernels: which layout a layer runs in (`runtime_layout`), what
kernel that is in words, and bitsandbytes' CPU 4-bit layout inverted to its portable one.
Pure dispatch and tensor functions, unit-tested without a GPU (see `compress.quant.bnb`)."""

from __future__ import annotations

import torch

from compress.errors import BadInput

INSTALL = "pip install bitsandbytes  (or: pip install -e .[bnb])"

try:
    import bitsandbytes as bnb
    from bitsandbytes.functional import QuantState
except ImportError as _e:  # pragma: no cover - exercised only without bitsandbytes
    raise BadInput(
        f"bnb-quantized layers need the 'bitsandbytes' package ({_e}).", fix=INSTALL
    ) from None

QUANT_TYPES = ("nf4", "fp4", "int8")
BLOCKSIZE = 64  # bitsandbytes' default 4-bit block: one absmax scale per 64 weights
CPU_BLOCK_N = 32  # output rows per tile in bitsandbytes' CPU 4-bit layout


# -- dispatch (pure: unit-tested without a GPU) ---------------------------------------------


def cpu_bf16_kernel_available() -> bool:
    """Whether bitsandbytes' CPU 4-bit kernel (AVX512-BF16) can run on this CPU."""
    probe = getattr(bnb.functional, "has_avx512bf16", None)
    return bool(probe()) if probe is not None else False


def runtime_layout(
    device: str | torch.device,
    quant_type: str,
    *,
    in_features: int,
    out_features: int,
    cpu_packed: bool = True,
    cpu_bf16_kernel: bool = False,
    blocksize: int = BLOCKSIZE,
) -> str:
    """Where and how a bnb layer runs: ``cuda``, ``cpu_packed`` or ``cpu`` (module docstring).

    ``cuda`` is chosen for CUDA devices only; ``cpu_packed`` only for 4-bit layers on a CPU
    whose kernel exists (`cpu_bf16_kernel`) and whose shape the layout takes (out_features a
    multiple of 32, in_features a multiple of the block size).
    """
    dev = torch.device(device)
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {QUANT_TYPES}; got {quant_type!r}")
    if dev.type == "cuda":
        return "cuda"
    if dev.type != "cpu":
        raise ValueError(f"bitsandbytes layers run on cpu or cuda here; got {dev}")
    if (
        quant_type != "int8"
        and cpu_packed
        and cpu_bf16_kernel
        and out_features % CPU_BLOCK_N == 0
        and in_features % blocksize == 0
    ):
        return "cpu_packed"
    return "cpu"


def cpu_4bit_kernel() -> tuple[str, bool]:
    """(name of the CPU 4-bit kernel bitsandbytes uses, whether it is its fallback)."""
    if not cpu_bf16_kernel_available():
        return "bitsandbytes dequantize_4bit + torch linear per call (no AVX512-BF16)", True
    try:
        from bitsandbytes.backends.cpu import ops as cpu_ops
    except ImportError:  # pragma: no cover - layout of other bitsandbytes versions
        return "bitsandbytes CPU gemv_4bit", False
    if getattr(cpu_ops, "gemm_4bit_forward_kernel", None) is not None:
        return "kernels-community gemm_4bit_forward (AVX512-BF16)", False
    return "libbitsandbytes_cpu gemv_4bit_inference_*_bf16 (fallback)", True


def cpu_int8_kernel() -> str:
    try:
        from bitsandbytes.backends.cpu import ops as cpu_ops
    except ImportError:  # pragma: no cover
        return "bitsandbytes int8 matmul"
    if getattr(cpu_ops, "_has_avx512", False):
        return "bitsandbytes int8_mixed_scaled_mm via torch._int_mm (AVX512)"
    return "bitsandbytes int8_mixed_scaled_mm, default (non-AVX512) int8 matmul"


# -- bitsandbytes' CPU 4-bit layout, inverted (pure tensor function) -------------------------


def unpack_cpu_layout(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """bitsandbytes' CPU kernel layout [N, K/2] -> its portable layout [N*K/2, 1] (uint8, two
    codes per byte, first code in the high nibble). Exact: a permutation of the 4-bit codes."""
    n, k = out_features, in_features
    p = packed.reshape(-1, CPU_BLOCK_N)
    tile = torch.cat([p & 0xF, p >> 4], dim=-1)  # [.., 64]: 32 low nibbles then 32 high
    codes = tile.reshape(n // CPU_BLOCK_N, k // 2, CPU_BLOCK_N, 2).transpose(1, 2).reshape(-1)
    return ((codes[0::2] << 4) | codes[1::2]).to(torch.uint8).reshape(-1, 1)


def portable_4bit(
    layer: bnb.nn.Linear4bit, absmax_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, QuantState]:
    """`layer`'s 4-bit weight and QuantState in bitsandbytes' portable layout, leaving what the
    layer holds untouched. From the CPU layout the scales stay un-nested, in `absmax_dtype`
    (default: as held, bf16)."""
    w = layer.weight
    qs = w.quant_state
    if not getattr(qs, "packing_format_for_cpu", False):
        return w.data, qs
    absmax = qs.absmax.t().reshape(-1)  # [K/bs, N] -> [N * K/bs], the block order of the codes
    portable = QuantState(
        absmax=absmax.to(absmax_dtype) if absmax_dtype is not None else absmax.contiguous(),
        shape=qs.shape,
        code=qs.code,
        blocksize=qs.blocksize,
        quant_type=qs.quant_type,
        dtype=getattr(qs, "original_dtype", qs.dtype),
    )
    n, k = qs.shape
    return unpack_cpu_layout(w.data, n, k), portable

"""Modules that hold quantized weights for real (int8 / packed int4 buffers) and run them with
the matmul kernels PyTorch ships, so memory and latency savings are measured, not simulated.

Which kernel is fastest depends on the host AND on the number of rows: on one 2-core Xeon
`aten._weight_int8pack_mm` is faster than an fp32 linear for one row and 2x slower for 128, on
an EPYC it was faster for both. So Int8Linear has several execution paths over the same int8
storage (`PATHS`: the int8 kernel with bf16 activations, or the codes dequantized per call and
an fp32 / bf16 GEMM), one for small calls (decode) and one for large ones (prefill, eval);
`compress.profile.kernels` times them on the host and sets them (`set_paths`). Int4Linear keeps
the kernel's own packed layout, which only `aten._weight_int4pack_mm(_for_cpu)` reads.
On CUDA the int4 path uses the tinygemm kernel `aten._weight_int4pack_mm` (as torchao does).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from compress._config import INT4_GROUP_SIZES
from compress.numerics.grid import QuantizedTensor, int8_codes, pack_int4, unpack_int4

log = logging.getLogger(__name__)


def cuda_inner_k_tiles(in_features: int) -> int:
    """tinygemm's `innerKTiles` for a layer: the largest of 8, 4, 2 whose K tile (16 x tiles)
    divides `in_features` (SmolLM2's 576 takes 4; 8 would need K % 128 == 0)."""
    for tiles in (8, 4, 2):
        if in_features % (16 * tiles) == 0:
            return tiles
    raise ValueError(f"tinygemm int4 needs in_features divisible by 32; got {in_features}")


def _with_bias(tensors: dict[str, torch.Tensor], bias) -> dict[str, torch.Tensor]:
    if bias is not None:
        tensors["bias"] = bias.detach()
    return tensors


def _load_bias(bias, tensors: dict[str, torch.Tensor]) -> None:
    if bias is not None:
        bias.data.copy_(tensors["bias"].to(bias.dtype))


_INT8_KERNEL: dict[tuple[str, torch.dtype], bool] = {}


def has_int8_weight_kernel(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `aten._weight_int8pack_mm` runs on this device type and dtype (probed once:
    CPU has it; CUDA builds differ between torch versions)."""
    key = (device.type, dtype)
    if key not in _INT8_KERNEL:
        try:
            x = torch.zeros(1, 32, dtype=dtype, device=device)
            w = torch.zeros(8, 32, dtype=torch.int8, device=device)
            torch._weight_int8pack_mm(x, w, torch.ones(8, dtype=dtype, device=device))
            _INT8_KERNEL[key] = True
        except (RuntimeError, NotImplementedError) as e:
            log.info("no int8 weight-only kernel on %s/%s (%s): dequantizing", *key, e)
            _INT8_KERNEL[key] = False
    return _INT8_KERNEL[key]


def weight_only_kernel(bits: int, device: str | torch.device, dtype: torch.dtype) -> str:
    """What Int8Linear (bits 8) / Int4Linear (bits 2-4) run on `device`, in words, for reports."""
    dev = torch.device(device)
    if bits <= 4:
        return "aten._weight_int4pack_mm" + ("_for_cpu" if dev.type == "cpu" else " (tinygemm)")
    if has_int8_weight_kernel(dev, dtype):
        return "aten._weight_int8pack_mm"
    return (
        f"none on {dev.type}: int8 weights dequantized at every call (no int8 weight-only "
        "kernel here), so memory drops but speed may not"
    )


def _flat(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).to(dtype)


DEQUANT_DTYPES = {"dequant_float32": torch.float32, "dequant_bfloat16": torch.bfloat16}

#: rows (batch x tokens) up to which a layer takes its small-rows (decode) path
DEFAULT_ROWS_THRESHOLD = 16


def set_paths(
    module: nn.Module, small: str, large: str, rows_threshold: int = DEFAULT_ROWS_THRESHOLD
) -> None:
    """Which execution path a quantized module takes for calls of at most `rows_threshold`
    rows (decode) and for larger ones (prefill, evaluation). Paths are listed in `PATHS`."""
    for p in (small, large):
        if p not in module.PATHS:
            raise ValueError(f"{module.kind}: unknown path {p!r}; expected one of {module.PATHS}")
    module.path_small, module.path_large, module.rows_threshold = small, large, rows_threshold


class Int8Linear(nn.Module):
    """Weight-only int8, symmetric, one scale per output channel."""

    kind = "int8_linear"
    #: execution paths that compute the same product from the same int8 storage
    PATHS = ("int8pack", "dequant_float32", "dequant_bfloat16")

    def __init__(self, in_features: int, out_features: int, bias: bool, compute_dtype, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        set_paths(self, "int8pack", "int8pack")
        self.register_buffer(
            "qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer("scale", torch.empty(out_features, dtype=compute_dtype, device=device))
        self.bias = _empty_bias(out_features, bias, compute_dtype, device)

    @classmethod
    def from_float(
        cls, linear: nn.Linear, qt: QuantizedTensor, compute_dtype: torch.dtype
    ) -> Int8Linear:
        if qt.bits != 8 or qt.groups != 1 or bool(qt.zero.any()):
            raise ValueError("Int8Linear needs a symmetric per-channel 8-bit grid")
        m = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            compute_dtype,
            linear.weight.device,
        )
        m.qweight.copy_(int8_codes(qt))
        m.scale.copy_(qt.scale[:, 0].to(compute_dtype))
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.detach().to(compute_dtype))
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        path = self.path_small if rows <= self.rows_threshold else self.path_large
        if path == "int8pack" and not has_int8_weight_kernel(x.device, self.compute_dtype):
            path = f"dequant_{str(self.compute_dtype).removeprefix('torch.')}"  # reported
        if path == "int8pack":
            y = torch._weight_int8pack_mm(_flat(x, self.compute_dtype), self.qweight, self.scale)
        else:  # dequantize the int8 codes for this call and run a float GEMM in `dt`
            dt = DEQUANT_DTYPES[path]
            w = self.qweight.to(dt) * self.scale.to(dt)[:, None]
            y = F.linear(_flat(x, dt), w)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def spec(self) -> dict:
        return {
            "kind": self.kind,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
        }

    @classmethod
    def shell(cls, spec: dict, dtype: torch.dtype) -> Int8Linear:
        return cls(spec["in_features"], spec["out_features"], spec["bias"], dtype)

    def export(self) -> dict[str, torch.Tensor]:
        return _with_bias({"qweight": self.qweight, "scale": self.scale}, self.bias)

    def load_export(self, t: dict[str, torch.Tensor]) -> None:
        self.qweight.copy_(t["qweight"])
        self.scale.copy_(t["scale"].to(self.compute_dtype))
        _load_bias(self.bias, t)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per-channel"


class Int4Linear(nn.Module):
    """Weight-only int4, groups of `group_size` inputs with a float scale and zero each.

    In memory the weight sits in the kernel's own packed layout (half a byte per weight);
    `export()` recovers the portable codes exactly by running the kernel on an identity.
    """

    kind = "int4_linear"
    #: the packed layout is the kernel's own: no other path reads it without a second copy
    PATHS = ("int4pack",)

    def __init__(self, in_features, out_features, bias, group_size, compute_dtype, device=None):
        super().__init__()
        set_paths(self, "int4pack", "int4pack")
        if group_size not in INT4_GROUP_SIZES or in_features % group_size:
            raise ValueError(
                f"int4 kernels need group_size in {INT4_GROUP_SIZES} dividing in_features "
                f"({in_features}); got {group_size}"
            )
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.compute_dtype = compute_dtype
        self.register_buffer("qweight", torch.empty(0, dtype=torch.uint8, device=device))
        self.register_buffer(
            "scale_zero",
            torch.empty(
                in_features // group_size, out_features, 2, dtype=compute_dtype, device=device
            ),
        )
        self.bias = _empty_bias(out_features, bias, compute_dtype, device)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_float(
        cls, linear: nn.Linear, qt: QuantizedTensor, compute_dtype: torch.dtype
    ) -> Int4Linear:
        if qt.bits != 4 or qt.group_size is None:
            raise ValueError("Int4Linear needs a grouped 4-bit grid")
        m = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            qt.group_size,
            compute_dtype,
            linear.weight.device,
        )
        m._set(qt.q, qt.scale, qt.zero)
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.detach().to(compute_dtype))
        return m

    def _set(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> None:
        dev = self.scale_zero.device
        codes = codes.to(dev)
        if dev.type == "cpu":  # rows pack independently: 1024 at a time (int32 codes are 4x)
            packed = torch.cat(
                [
                    torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                        codes[r : r + 1024].to(torch.int32), 1
                    )
                    for r in range(0, codes.shape[0], 1024)
                ]
            )
        else:
            hi_lo = (codes[:, 0::2] << 4 | codes[:, 1::2]).to(torch.uint8)
            packed = torch.ops.aten._convert_weight_to_int4pack(
                hi_lo, cuda_inner_k_tiles(self.in_features)
            )
        self.qweight = packed
        sz = torch.stack([scale.t(), zero.t()], dim=-1).to(self.compute_dtype).contiguous()
        self.scale_zero = sz.to(dev)

    def _mm(self, x2: torch.Tensor, scale_zero: torch.Tensor) -> torch.Tensor:
        if x2.device.type == "cpu":
            return torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2, self.qweight, self.group_size, scale_zero
            )
        return torch.ops.aten._weight_int4pack_mm(x2, self.qweight, self.group_size, scale_zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._mm(_flat(x, self.compute_dtype), self.scale_zero)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    # -- portable form ------------------------------------------------------------------
    def codes(self) -> torch.Tensor:
        """The uint8 codes [out, in], recovered from the kernel layout (exact: small ints), by
        running the kernel on the identity, 1024 input features at a time (a 7B model's
        11008-wide identity would be 242 MB at once)."""
        unit = torch.empty_like(self.scale_zero)
        unit[..., 0] = 1.0
        unit[..., 1] = 8.0  # (q - 8) * 1 + 8 == q
        dev, n = self.qweight.device, self.in_features
        out = torch.empty(self.out_features, n, dtype=torch.uint8, device=dev)
        for r0 in range(0, n, 1024):
            r1 = min(n, r0 + 1024)
            eye = torch.zeros(r1 - r0, n, dtype=self.compute_dtype, device=dev)
            eye[:, r0:r1].fill_diagonal_(1.0)
            out[:, r0:r1] = self._mm(eye, unit).t().round().to(torch.uint8)
        return out

    def spec(self) -> dict:
        return {
            "kind": self.kind,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "group_size": self.group_size,
        }

    @classmethod
    def shell(cls, spec: dict, dtype: torch.dtype) -> Int4Linear:
        return cls(
            spec["in_features"], spec["out_features"], spec["bias"], spec["group_size"], dtype
        )

    def export(self) -> dict[str, torch.Tensor]:
        out = {
            "qweight_packed": pack_int4(self.codes()),
            "scale": self.scale_zero[..., 0].t().contiguous(),  # compute dtype: as it runs
            "zero": self.scale_zero[..., 1].t().contiguous(),
        }
        return _with_bias(out, self.bias)

    def load_export(self, t: dict[str, torch.Tensor]) -> None:
        self._set(unpack_int4(t["qweight_packed"]), t["scale"], t["zero"])
        _load_bias(self.bias, t)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int4 group={self.group_size}"


class Int8Embedding(nn.Module):
    """Embedding lookup that reads rows from a tied Int8Linear's storage (stored once)."""

    kind = "int8_embedding"

    def __init__(self, source: Int8Linear, out_dtype, embed_scale: float | None = None):
        super().__init__()
        self.source = [source]  # a list so the shared buffers are not registered twice
        self.out_dtype = out_dtype
        self.embed_scale = embed_scale
        self.num_embeddings, self.embedding_dim = source.out_features, source.in_features

    @property
    def weight_source(self) -> Int8Linear:
        return self.source[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        src = self.weight_source
        rows = F.embedding(ids, src.qweight).to(self.out_dtype)
        out = rows * src.scale[ids].to(self.out_dtype).unsqueeze(-1)
        if self.embed_scale is not None:
            out = out * torch.tensor(self.embed_scale, dtype=self.out_dtype)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}x{self.embedding_dim}, int8 rows shared with the lm_head"


QUANT_MODULES = (Int8Linear, Int4Linear, Int8Embedding)


def _empty_bias(
    out_features: int, bias: bool, dtype: torch.dtype, device: torch.device | str | None
) -> nn.Parameter | None:
    """A frozen bias of the compute dtype, filled by `load_state_dict` (None without bias)."""
    if not bias:
        return None
    return nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), False)

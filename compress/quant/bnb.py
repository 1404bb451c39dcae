"""A serializable wrapper over bitsandbytes' `Linear4bit` (NF4 / FP4) and `Linear8bitLt`
(LLM.int8()), holding the weights as bitsandbytes' own packed storage.

Where the weights live and which kernel runs them (`runtime_layout`):

* ``cuda``: bitsandbytes' CUDA kernels. Weights are quantized by moving the layer to the GPU
  (bitsandbytes quantizes on `.to(device)`); double-quantized scales stay 8-bit in memory.
* ``cpu_packed`` (4-bit on a CPU with AVX512-BF16): bitsandbytes' CPU kernel layout, the one
  `Linear4bit.forward` converts to at its first CPU inference call. The conversion is done
  eagerly here, so bytes measured before and after a forward agree. In this layout the block
  scales are held as bf16, *expanded from their double-quantized 8-bit form*: double_quant
  saves no memory on CPU (it still adds its small rounding of the scales).
* ``cpu``: bitsandbytes' portable layout on CPU: 4-bit weights are dequantized at every call
  (slow), int8 runs bitsandbytes' CPU int8 matmul.

Export writes the portable layout (`QuantState.as_dict(packed=True)` for 4-bit; int8 codes CB
and row scales SCB for int8) as plain tensors; `load_export` rebuilds exactly the state that
was held, so a reloaded model gives identical logits. Scales held as bf16 (``cpu_packed``) are
exported as bf16 and upcast to float32 (exactly) wherever another layout needs float32.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from compress.errors import StageFailed
from compress.quant.bnb_layout import (  # noqa: F401  (re-exported for callers)
    BLOCKSIZE,
    CPU_BLOCK_N,
    INSTALL,
    QUANT_TYPES,
    QuantState,
    bnb,
    cpu_4bit_kernel,
    cpu_bf16_kernel_available,
    cpu_int8_kernel,
    portable_4bit,
    runtime_layout,
    unpack_cpu_layout,
)

log = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class Linear4bit(bnb.nn.Linear4bit):
    """`bnb.nn.Linear4bit` whose `state_dict()` reads the portable layout without changing the
    layer. bitsandbytes 0.50.2's own converts a CPU-packed layer back in place, and for
    un-nested scales leaves them transposed, so the next forward runs scrambled scales
    (measured: outputs off by 0.04 on a 96x128 layer after one `state_dict()` call)."""

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        weight, qs = portable_4bit(self)
        destination[prefix + "weight"] = weight if keep_vars else weight.detach()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()
        for k, v in qs.as_dict(packed=True).items():
            destination[prefix + "weight." + k] = v if keep_vars else v.detach()


# -- the module -------------------------------------------------------------------------------


class BnbLinear(nn.Module):
    """A Linear whose weight is held by `bnb.nn.Linear4bit` or `bnb.nn.Linear8bitLt` (`inner`).

    4-bit layers compute in `compute_dtype` (bitsandbytes casts inputs in and outputs back;
    its CPU kernel computes in bf16 whatever the compute dtype). LLM.int8() layers take float16
    inputs (bitsandbytes quantizes activations from float16); outputs come back in the
    input's dtype.
    """

    kind = "bnb_linear"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        quant_type: str = "nf4",
        *,
        double_quant: bool = True,
        threshold: float = 6.0,
        compute_dtype: str = "bfloat16",
        cpu_packed: bool = True,
        blocksize: int = BLOCKSIZE,
    ):
        super().__init__()
        if quant_type not in QUANT_TYPES:
            raise ValueError(f"quant_type must be one of {QUANT_TYPES}; got {quant_type!r}")
        self.in_features, self.out_features = in_features, out_features
        self.quant_type = quant_type
        self.double_quant = bool(double_quant) and quant_type != "int8"
        self.threshold = float(threshold)
        self.compute_dtype_name = compute_dtype
        self.compute_dtype = _DTYPES[compute_dtype]
        self.cpu_packed = bool(cpu_packed)
        self.blocksize = blocksize
        if self.is_4bit:
            self.inner = Linear4bit(
                in_features,
                out_features,
                bias=bias,
                compute_dtype=self.compute_dtype,
                compress_statistics=self.double_quant,
                quant_type=quant_type,
                device="meta",
            )
        else:
            self.inner = bnb.nn.Linear8bitLt(
                in_features,
                out_features,
                bias=bias,
                has_fp16_weights=False,
                threshold=self.threshold,
                device="meta",
            )
        self.train(False)

    @property
    def is_4bit(self) -> bool:
        return self.quant_type != "int8"

    @property
    def bias_dtype(self) -> torch.dtype:
        return self.compute_dtype if self.is_4bit else torch.float16

    @property
    def device(self) -> torch.device:
        return self.inner.weight.device

    def layout(self, device: str | torch.device | None = None) -> str:
        """The layout this layer takes on `device` (default: where it is)."""
        return runtime_layout(
            device if device is not None else self.device,
            self.quant_type,
            in_features=self.in_features,
            out_features=self.out_features,
            cpu_packed=self.cpu_packed,
            cpu_bf16_kernel=cpu_bf16_kernel_available(),
            blocksize=self.blocksize,
        )

    @property
    def is_cpu_packed(self) -> bool:
        qs = getattr(self.inner.weight, "quant_state", None) if self.is_4bit else None
        return bool(getattr(qs, "packing_format_for_cpu", False))

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        quant_type: str,
        device: str | torch.device,
        **kwargs: Any,
    ) -> BnbLinear:
        """Quantize `linear` on `device`: bitsandbytes quantizes when the layer moves there."""
        m = cls(
            linear.in_features, linear.out_features, linear.bias is not None, quant_type, **kwargs
        )
        device = torch.device(device)
        w = linear.weight.detach()
        if m.is_4bit:
            m.inner.weight = bnb.nn.Params4bit(
                w,
                requires_grad=False,
                blocksize=m.blocksize,
                compress_statistics=m.double_quant,
                quant_type=quant_type,
                module=m.inner,
            )
        else:  # Int8Params quantizes when it leaves the CPU for a device (or stays on CPU)
            m.inner.weight = bnb.nn.Int8Params(
                w.to("cpu"), requires_grad=False, has_fp16_weights=False
            )
        if linear.bias is not None:
            m.set_bias(linear.bias)
        m.inner.to(device)  # quantization happens here
        qs = getattr(m.inner.weight, "quant_state", None)
        if qs is not None and qs.nested:  # bitsandbytes shares one nested code table among all
            qs.state2.code = qs.state2.code.clone()  # layers: own it, as after a reload, so
            # each layer's bytes are its own (weight_nbytes counts it once per layer)
        if not m.is_4bit:
            m.inner.init_8bit_state()  # CB/SCB held by the matmul state from now on
        m._settle()
        return m

    def set_bias(self, bias: torch.Tensor) -> None:
        """Hold `bias` in the dtype the layer adds it in (compute dtype; float16 for int8)."""
        dev = self.device if self.device.type != "meta" else bias.device
        self.inner.bias = nn.Parameter(
            bias.detach().to(device=dev, dtype=self.bias_dtype).clone(), requires_grad=False
        )

    def _settle(self) -> None:
        """Bring the held state to the layout of the current device (see module docstring)."""
        if not self.is_4bit:
            self._int8_state_follows_weight()
            return
        layout = self.layout()
        # stop bitsandbytes from converting layers lazily where this wrapper decided not to
        self.inner.support_avx512bf16_for_cpu = layout == "cpu_packed"
        qs = self.inner.weight.quant_state
        if layout == "cpu_packed" and not self.is_cpu_packed:
            with torch.no_grad():  # Linear4bit.forward converts to its CPU kernel layout
                self.inner(torch.zeros(1, self.in_features, dtype=self.compute_dtype))
            qs = self.inner.weight.quant_state
            if not getattr(qs, "packing_format_for_cpu", False):
                raise StageFailed(
                    "bitsandbytes did not convert a 4-bit layer to its CPU kernel layout "
                    "(is this bitsandbytes version supported?).",
                    fix="Set cpu_packed: false in the bnb stage.",
                )
        elif layout != "cpu_packed" and not qs.nested and qs.absmax.dtype != torch.float32:
            qs.absmax = qs.absmax.float()  # bf16 scales from a CPU-packed export: exact upcast

    def _int8_state_follows_weight(self) -> None:
        w, state = self.inner.weight, self.inner.state
        scb = state.SCB if state.SCB is not None else getattr(w, "SCB", None)
        w.CB = w.SCB = None
        state.CB = w.data
        state.SCB = scb.to(w.device) if scb is not None else None

    # -- moving between devices -----------------------------------------------------------
    def _apply(self, fn, recurse: bool = True):
        here = self.device
        if here.type == "meta":
            return super()._apply(fn, recurse)
        there = fn(torch.empty(0, device=here)).device
        if there == here:
            out = super()._apply(fn, recurse)
            if not self.is_4bit:
                self._int8_state_follows_weight()
            return out
        if self.is_cpu_packed:  # the CPU layout means nothing elsewhere: go portable first
            weight, qs = self._portable(torch.float32)
            self._hold_4bit(weight, qs)
        out = super()._apply(fn, recurse)
        self._settle()
        return out

    def _hold_4bit(self, weight: torch.Tensor, qs: QuantState) -> None:
        self.inner.weight = bnb.nn.Params4bit(
            weight,
            requires_grad=False,
            quant_state=qs,
            blocksize=qs.blocksize,
            compress_statistics=qs.nested,
            quant_type=qs.quant_type,
            quant_storage=weight.dtype,
            module=self.inner,
            bnb_quantized=True,
        )
        self.inner.quant_state = qs

    def _portable(self, absmax_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, QuantState]:
        return portable_4bit(self.inner, absmax_dtype)

    # -- forward --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_4bit:
            return self.inner(x)
        return self.inner(x.to(torch.float16)).to(x.dtype)

    # -- protocol: spec / shell / export / load_export / weight_nbytes --------------------
    def spec(self) -> dict:
        return {
            "kind": self.kind,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.inner.bias is not None,
            "quant_type": self.quant_type,
            "double_quant": self.double_quant,
            "threshold": self.threshold,
            "compute_dtype": self.compute_dtype_name,
            "cpu_packed": self.cpu_packed,
            "blocksize": self.blocksize,
        }

    @classmethod
    def shell(cls, spec: dict, dtype: torch.dtype | None = None) -> BnbLinear:
        return cls(
            spec["in_features"],
            spec["out_features"],
            spec["bias"],
            spec["quant_type"],
            double_quant=spec["double_quant"],
            threshold=spec["threshold"],
            compute_dtype=spec["compute_dtype"],
            cpu_packed=spec.get("cpu_packed", True),
            blocksize=spec.get("blocksize", BLOCKSIZE),
        )

    def export(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.is_4bit:
            weight, qs = self._portable()
            out["weight"] = weight
            out.update(qs.as_dict(packed=True))
        else:
            out["CB"] = self.inner.state.CB
            out["SCB"] = self.inner.state.SCB
        if self.inner.bias is not None:
            out["bias"] = self.inner.bias.detach()
        return {k: v.detach() for k, v in out.items()}

    def load_export(self, t: dict[str, torch.Tensor]) -> None:
        t = dict(t)
        bias = t.pop("bias", None)
        device = torch.device("cpu")
        if self.is_4bit:
            weight = t.pop("weight")
            self.inner.weight = bnb.nn.Params4bit.from_prequantized(
                weight, t, requires_grad=False, device=device, module=self.inner
            )
        else:
            cb, scb = t.pop("CB").to(device), t.pop("SCB").to(device)
            self.inner.weight = bnb.nn.Int8Params(
                cb, requires_grad=False, has_fp16_weights=False, CB=cb, SCB=scb
            )
            self.inner.init_8bit_state()
        if bias is not None:
            self.set_bias(bias)
        self._settle()

    def weight_nbytes(self) -> int:
        """Bytes of the quantization state held outside parameters (4-bit block scales, nested
        scales, code tables; int8 row scales SCB). The packed weight and the bias are parameters
        and counted by `compress.profile.memory.weight_bytes`, not here."""
        if self.is_4bit:
            qs = getattr(self.inner.weight, "quant_state", None)
            if qs is None:
                return 0
            parts = [qs.absmax, qs.code]
            if qs.nested:
                parts += [qs.state2.absmax, qs.state2.code, qs.offset]
        else:
            parts = [self.inner.state.SCB]
        params = {p.untyped_storage().data_ptr() for p in self.parameters()}
        seen: set[int] = set()
        total = 0
        for t in parts:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen or ptr in params:
                continue
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return total

    def extra_repr(self) -> str:
        q = self.quant_type + (" double-quant" if self.double_quant else "")
        if not self.is_4bit:
            q += f" threshold={self.threshold}"
        layout = self.layout() if self.device.type != "meta" else "unloaded"
        return f"in={self.in_features}, out={self.out_features}, {q}, layout={layout}"

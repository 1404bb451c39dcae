"""A serializable wrapper over torch.ao's dynamic int8 linear (fbgemm on CPU)."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as AoDynamicLinear


class DynamicInt8Linear(nn.Module):
    kind = "dynamic_int8_linear"

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features, self.has_bias = in_features, out_features, bias
        self.inner = AoDynamicLinear(in_features, out_features, bias_=bias, dtype=torch.qint8)

    @classmethod
    def from_float(cls, linear: nn.Linear, per_channel: bool = True) -> DynamicInt8Linear:
        with warnings.catch_warnings():  # torch marks quantized tensors deprecated; still the
            warnings.simplefilter("ignore", UserWarning)  # fbgemm path, see FEASIBILITY
            return cls._from_float(linear, per_channel)

    @classmethod
    def _from_float(cls, linear: nn.Linear, per_channel: bool) -> DynamicInt8Linear:
        w = linear.weight.detach().float()
        if per_channel:
            scale = (w.abs().amax(1) / 127).clamp(min=1e-12).double()
            qw = torch.quantize_per_channel(
                w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8
            )
        else:
            qw = torch.quantize_per_tensor(w, float(w.abs().max() / 127), 0, torch.qint8)
        m = cls(linear.in_features, linear.out_features, linear.bias is not None)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        m.inner.set_weight_bias(qw, bias)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float()).to(x.dtype)

    def spec(self) -> dict:
        return {
            "kind": self.kind,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.has_bias,
        }

    @classmethod
    def shell(cls, spec: dict, dtype: torch.dtype | None = None) -> DynamicInt8Linear:
        return cls(spec["in_features"], spec["out_features"], spec["bias"])

    def weight_nbytes(self) -> int:
        """Bytes of the packed int8 weight, its scales and bias (not buffers, so counted here)."""
        w, b = self.inner._weight_bias()
        n = w.int_repr().numel()
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            n += w.q_per_channel_scales().numel() * 8 + w.q_per_channel_zero_points().numel() * 8
        else:
            n += 16
        return n + (b.numel() * b.element_size() if b is not None else 0)

    def export(self) -> dict[str, torch.Tensor]:
        w, b = self.inner._weight_bias()
        out = {"qweight": w.int_repr().contiguous()}
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            out["scale"] = w.q_per_channel_scales().float()
        else:
            out["scale"] = torch.tensor([w.q_scale()], dtype=torch.float32)
        if b is not None:
            out["bias"] = b.float()
        return out

    def load_export(self, t: dict[str, torch.Tensor]) -> None:
        q, scale = t["qweight"], t["scale"].double()
        if scale.numel() == 1:
            qw = torch._make_per_tensor_quantized_tensor(q, float(scale), 0)
        else:
            qw = torch._make_per_channel_quantized_tensor(
                q, scale, torch.zeros_like(scale).long(), 0
            )
        self.inner.set_weight_bias(qw, t.get("bias"))

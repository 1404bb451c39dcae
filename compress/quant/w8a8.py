"""W8A8 on CUDA: int8 weights per output channel, int8 activations per token, int32 GEMM.

The GEMM is `torch._int_mm` (cuBLASLt int8 x int8 -> int32 on CUDA), so the matrix product
really runs in int8; it needs more than 16 rows, so short inputs (decode at batch 1) are padded
with zero rows, and reduction / output sizes that are multiples of 8. On CPU the same module is
correct but slow (`_int_mm` there is a reference kernel): CPU W8A8 uses torch.ao's fbgemm
dynamic linear (`compress.quant.dynamic`) instead.

    x  ~ xq * sx   (sx = max|x_row| / 127, one scale per token, computed at run time)
    W  ~ wq * sw   (sw = max|W_row| / 127, one scale per output channel)
    y  = (xq @ wq^T) * sx * sw^T + b
"""

from __future__ import annotations

import torch
from torch import nn

from compress.numerics.grid import QuantizedTensor, quantize
from compress.quant.modules import Int8Linear

#: torch._int_mm on CUDA needs more than this many rows in its first operand
_MIN_ROWS = 16


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: (codes int8 [M, K], scales float32 [M, 1])."""
    scale = (x.abs().amax(dim=-1, keepdim=True).float() / 127).clamp(min=1e-12)
    q = torch.clamp(torch.round(x.float() / scale), -127, 127).to(torch.int8)
    return q, scale


def int8_matmul(xq: torch.Tensor, wq_t: torch.Tensor) -> torch.Tensor:
    """int32 [M, N] = xq [M, K] @ wq_t [K, N], padding M past the kernel's minimum rows."""
    m = xq.shape[0]
    if xq.is_cuda and m <= _MIN_ROWS:
        pad = torch.zeros(_MIN_ROWS + 1 - m, xq.shape[1], dtype=xq.dtype, device=xq.device)
        return torch._int_mm(torch.cat([xq, pad]), wq_t)[:m]
    return torch._int_mm(xq.contiguous(), wq_t)


def supports(in_features: int, out_features: int) -> bool:
    """Whether the int8 GEMM takes these sizes (both multiples of 8)."""
    return in_features % 8 == 0 and out_features % 8 == 0


class W8A8Linear(Int8Linear):
    """Int8Linear's storage (int8 codes, one scale per output channel, bias) with int8
    activations: the forward quantizes each token and runs the int8 GEMM."""

    kind = "w8a8_linear"

    def __init__(self, in_features, out_features, bias, compute_dtype=torch.float16, device=None):
        if not supports(in_features, out_features):
            raise ValueError(
                f"W8A8 int8 GEMM needs in/out features that are multiples of 8; got "
                f"{in_features} x {out_features}"
            )
        super().__init__(in_features, out_features, bias, compute_dtype, device)

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        compute_dtype: torch.dtype = torch.float16,
        per_channel: bool = True,
    ) -> W8A8Linear:
        """`per_channel: False` uses one weight scale for the whole matrix."""
        w = linear.weight.detach()
        if per_channel:
            qt = quantize(w, 8, None, symmetric=True)
        else:
            one = quantize(w.reshape(1, -1), 8, None, symmetric=True)
            qt = QuantizedTensor(
                q=one.q.reshape(w.shape),
                scale=one.scale.expand(w.shape[0], 1).contiguous(),
                zero=torch.zeros(w.shape[0], 1, device=w.device),
                bits=8,
                group_size=None,
            )
        return super().from_float(linear, qt, compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        xq, xs = quantize_rows(x2)
        acc = int8_matmul(xq, self.qweight.t())
        y = (acc.float() * xs * self.scale.float()).to(self.compute_dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, W8A8 int8 per-channel/per-token"

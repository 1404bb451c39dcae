"""Per-input-channel rescaling folded into the op that feeds a group of linears: pure tensors.

For a group of linears that all read the same input X (the output of a norm, or of a linear
such as up_proj feeding down_proj), dividing input channel j by s_j and multiplying column j of
every consumer's weight by s_j leaves every output unchanged:

    X W^T == (X / s) (W * s)^T

SmoothQuant picks s to move activation outliers into the weights (easier to quantize
activations); AWQ picks s to protect the weights that see large activations. Both fold 1 / s
into the producer:

    RMSNorm / LayerNorm   y = n(x) * (offset + w) [+ b]   ->  (offset + w') = (offset + w) / s,
                                                               b' = b / s
                          offset is 0 for Llama-style norms and 1 for Gemma's (1 + weight)
    Linear producer       rows j of W_prev (and bias_j) divided by s_j: output channel j / s_j
                          (for up_proj -> down_proj: act(gate) * up is linear in up)
"""

from __future__ import annotations

import torch

MIN_SCALE = 1e-5
MAX_SCALE = 1e5


def smooth_scales(
    act_absmax: torch.Tensor,
    weights: list[torch.Tensor],
    alpha: float,
    *,
    min_scale: float = MIN_SCALE,
    max_scale: float = MAX_SCALE,
) -> torch.Tensor:
    """SmoothQuant's s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha) over all `weights` (each
    [out, in]) that read channel j. Channels never active in calibration (or with all-zero
    weights) keep s = 1; the rest are clamped to [min_scale, max_scale]."""
    if not weights:
        raise ValueError("smooth_scales needs at least one weight")
    a = act_absmax.detach().float()
    w_max = torch.stack([w.detach().float().abs().amax(0) for w in weights]).amax(0)
    if a.shape != w_max.shape:
        raise ValueError(f"activation stats {tuple(a.shape)} vs weight inputs {tuple(w_max.shape)}")
    ok = (a > 0) & (w_max > 0) & torch.isfinite(a)
    s = a.clamp(min=1e-30).pow(alpha) / w_max.clamp(min=1e-30).pow(1 - alpha)
    s = torch.where(ok, s, torch.ones_like(s))
    return s.clamp(min_scale, max_scale)


@torch.no_grad()
def fold_into_norm(
    weight: torch.Tensor, s: torch.Tensor, bias: torch.Tensor | None = None, offset: float = 0.0
) -> None:
    """In place: the norm's output channel j becomes output_j / s_j (exact in real arithmetic).
    `offset` = 1.0 for norms that multiply by (1 + weight) (Gemma)."""
    s32 = s.to(torch.float32)
    new = (offset + weight.float()) / s32 - offset
    weight.copy_(new.to(weight.dtype))
    if bias is not None:
        bias.copy_((bias.float() / s32).to(bias.dtype))


@torch.no_grad()
def fold_into_linear_rows(
    weight: torch.Tensor, s: torch.Tensor, bias: torch.Tensor | None = None
) -> None:
    """In place: the producer linear's output channel j becomes output_j / s_j."""
    s32 = s.to(torch.float32)
    weight.copy_((weight.float() / s32[:, None]).to(weight.dtype))
    if bias is not None:
        bias.copy_((bias.float() / s32).to(bias.dtype))


@torch.no_grad()
def scale_input_columns(weight: torch.Tensor, s: torch.Tensor) -> None:
    """In place: column j of a consumer's weight [out, in] times s_j."""
    weight.copy_((weight.float() * s.to(torch.float32)[None, :]).to(weight.dtype))

"""AWQ's searches (Lin et al. 2023) as pure tensor functions: per-channel scales, then clipping.

Both minimise the output error of linears on calibration activations X [n, in]. With the
second-moment matrix H = X^T X / n the mean squared output error of a weight change dW is

    mean_tokens || X dW^T ||^2  =  sum( (dW @ H) * dW )

so a search needs H (in x in) and never the activations themselves: H can be accumulated
over any number of tokens in memory independent of n, and each candidate costs one
[out, in] x [in, in] product instead of one [n, in] x [in, out] product.

Scales: for alpha on a grid in [0, 1), s = mean|X|^alpha (optionally / w_mean^(1-alpha),
AutoAWQ's "duo scaling"), normalised so sqrt(max(s) * min(s)) == 1; each weight W becomes
Q(W * s) / s in the input space of X, i.e. the layer sees X / s and stores Q(W * s).
alpha = 0 is s = 1, plain round-to-nearest, so the chosen alpha is never worse than RTN on
the activations H was built from.

Clipping: per output row and group, shrink the quantization range by (1 - i / grid),
i < max_shrink * grid (i = 0 is no clipping), and keep the ratio with the smallest error of
that group's partial output (block-diagonal of H); the clipped weight is kept only if the
total output error (full H) is not larger than without clipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def gram(x: torch.Tensor) -> torch.Tensor:
    """H = X^T X / n for activations [..., in] (float32)."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    return x2.T @ x2 / max(x2.shape[0], 1)


def fake_quantize(
    w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool
) -> torch.Tensor:
    """Quantize -> dequantize on compress.numerics.grid's grid (float32): bit-identical to
    `dequantize(quantize(w, ...))` (tested), without the uint8 codes and their copies, since
    the searches call it hundreds of times per layer."""
    out_f, in_f = w.shape
    g = in_f if group_size is None else group_size
    if in_f % g:
        raise ValueError(f"group_size {g} does not divide in_features {in_f}")
    wg = w.detach().float().reshape(out_f, in_f // g, g)
    mid, qmax = 2 ** (bits - 1), 2**bits - 1
    tiny = torch.finfo(torch.float32).tiny
    if symmetric:
        scale = (wg.abs().amax(-1, keepdim=True) / (mid - 1)).clamp(min=tiny)
        q = (wg / scale).round_().clamp_(-mid, qmax - mid)
        return q.mul_(scale).reshape(out_f, in_f)
    lo, hi = torch.aminmax(wg, dim=-1, keepdim=True)
    scale = ((hi - lo) / qmax).clamp(min=tiny)
    zero = lo + mid * scale
    q = (wg - zero).div_(scale).round_().clamp_(-mid, qmax - mid)
    return q.mul_(scale).add_(zero).reshape(out_f, in_f)


def output_error(dw: torch.Tensor, h: torch.Tensor) -> float:
    """Mean over tokens of the squared output error (summed over outputs) of a weight change."""
    return float(((dw.float() @ h) * dw.float()).sum())


def awq_scales(
    x_absmean: torch.Tensor, alpha: float, w_absmean: torch.Tensor | None = None
) -> torch.Tensor:
    """s = mean|X|^alpha [/ w_mean^(1 - alpha)], normalised to sqrt(max * min) == 1."""
    s = x_absmean.float().clamp(min=1e-4).pow(alpha)
    if w_absmean is not None:
        s = s / w_absmean.float().clamp(min=1e-4).pow(1 - alpha)
    s = s.clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def weight_absmean(weights: list[torch.Tensor], group_size: int | None) -> torch.Tensor:
    """AutoAWQ's w_mean: |W| relative to its group's max, averaged over all output rows."""
    rows = torch.cat([w.detach().float() for w in weights])
    out_f, in_f = rows.shape
    g = in_f if group_size is None else group_size
    wg = rows.abs().reshape(out_f, in_f // g, g)
    rel = wg / wg.amax(-1, keepdim=True).clamp(min=1e-12)
    return rel.reshape(out_f, in_f).mean(0)


@dataclass
class ScaleSearch:
    alpha: float
    scales: torch.Tensor  # [in] multiply weight columns, divide the producer's output
    error: float  # output error at the chosen alpha
    rtn_error: float  # at alpha = 0 (s = 1)
    errors: list[float] = field(default_factory=list)  # one per grid point


def search_scales(
    weights: list[torch.Tensor],
    h: torch.Tensor,
    x_absmean: torch.Tensor,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    grid: int = 20,
    duo_scaling: bool = False,
) -> ScaleSearch:
    """Pick alpha in {0, 1/grid, ..., (grid-1)/grid} minimising the summed output error of
    `weights` (each [out, in], all reading the activations H describes)."""
    w = torch.cat([x.detach().float() for x in weights])
    h = h.float()
    w_mean = weight_absmean(weights, group_size) if duo_scaling else None
    errors: list[float] = []
    best: tuple[float, float, torch.Tensor] | None = None
    for i in range(grid):
        alpha = i / grid
        if i == 0:
            s = torch.ones(w.shape[1], dtype=torch.float32, device=w.device)
        else:
            s = awq_scales(x_absmean, alpha, w_mean).to(w.device)
        wq = fake_quantize(w * s, bits, group_size, symmetric) / s
        err = output_error(wq - w, h)
        if not math.isfinite(err):
            err = float("inf")
        errors.append(err)
        if best is None or err < best[0]:
            best = (err, alpha, s)
    assert best is not None
    return ScaleSearch(
        alpha=best[1], scales=best[2], error=best[0], rtn_error=errors[0], errors=errors
    )


@dataclass
class ClipSearch:
    weight: torch.Tensor  # clipped weight [out, in] (the input weight when clipping lost)
    ratios: torch.Tensor  # [out, groups] range kept per group (1.0 = not clipped)
    error: float  # total output error of the returned weight
    unclipped_error: float
    applied: bool


def _blocks(h: torch.Tensor, groups: int, g: int) -> torch.Tensor:
    idx = torch.arange(groups, device=h.device)
    hb = h.reshape(groups, g, groups, g)
    return hb[idx, :, idx, :]  # [groups, g, g]


def _clamp_groups(wg: torch.Tensor, ratio: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """Clamp each group [out, groups, g] to its range shrunk by `ratio` [out, groups]."""
    r = ratio[..., None]
    if symmetric:
        m = wg.abs().amax(-1, keepdim=True) * r
        return torch.maximum(torch.minimum(wg, m), -m)
    lo = wg.amin(-1, keepdim=True) * r
    hi = wg.amax(-1, keepdim=True) * r
    return torch.maximum(torch.minimum(wg, hi), lo)


def search_clip(
    weight: torch.Tensor,
    h: torch.Tensor,
    *,
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = False,
    grid: int = 20,
    max_shrink: float = 0.5,
) -> ClipSearch:
    """Per (output row, group) range shrink minimising that group's partial output error."""
    w = weight.detach().float()
    out_f, in_f = w.shape
    g = group_size
    ng = in_f // g
    wg = w.reshape(out_f, ng, g)
    h = h.float()
    hb = _blocks(h, ng, g)

    def group_err(wq: torch.Tensor) -> torch.Tensor:
        d = (wq - w).reshape(out_f, ng, g)
        return torch.einsum("okg,kgh,okh->ok", d, hb, d)

    best_err = None
    best_ratio = torch.ones(out_f, ng, device=w.device)
    steps = max(1, int(max_shrink * grid))
    for i in range(steps):
        r = torch.full((out_f, ng), 1 - i / grid, device=w.device)
        wc = _clamp_groups(wg, r, symmetric).reshape(out_f, in_f)
        err = group_err(fake_quantize(wc, bits, g, symmetric))
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, r, best_ratio)
    clipped = _clamp_groups(wg, best_ratio, symmetric).reshape(out_f, in_f)
    unclipped = output_error(fake_quantize(w, bits, g, symmetric) - w, h)
    err = output_error(fake_quantize(clipped, bits, g, symmetric) - w, h)
    if err <= unclipped:
        return ClipSearch(clipped.to(weight.dtype), best_ratio, err, unclipped, True)
    return ClipSearch(
        weight.detach().clone(), torch.ones_like(best_ratio), unclipped, unclipped, False
    )

"""GPTQ (Frantar et al. 2022) as pure tensor functions: no modules, no hooks, any device.

    H = 2/n * sum_x x^T x                     per Linear input, over n calibration rows
    quantize W column by column; after each column, spread its rounding error over the
    columns not yet quantized with the upper Cholesky factor of H^-1 (lazy, per block)

Grids follow compress/numerics/grid.py: w ~= (q - mid) * scale + zero, q in [0, 2**bits - 1].
Scales and zeros are found with `grid.quantize` (round-to-nearest's own min/max rules), so
with H = identity GPTQ returns exactly round-to-nearest's codes.
"""

from __future__ import annotations

import math

import torch

from compress.numerics.grid import QuantizedTensor, dequantize, quantize
from compress.numerics.hessian import chol_inverse_upper, consumes, one_thread_when_small

#: weights (rows x cols) above which the solve goes in row chunks of about this many
ROW_CHUNK = 1 << 22


def _solve_block(Wt, Qt, U, scale, zero, i1: int, i2: int, groups, grid, Zt=None) -> None:
    """Quantize columns i1..i2 (rows of the transposed Wt) one by one, each rounding error
    spread over the block's later columns at once; then the lazy update of later blocks.
    Zt (bool, like Wt): weights forced to 0 before they are quantized (no error to spread)."""
    bits, symmetric = grid
    mid, qmax = 2 ** (bits - 1), 2**bits - 1
    count = i2 - i1
    W1 = Wt[i1:i2].clone()
    if Zt is not None:
        W1.masked_fill_(Zt[i1:i2], 0.0)
    Err1 = torch.empty_like(W1)
    U1 = U[i1:i2, i1:i2]
    s, z = scale[:, 0], zero[:, 0]
    for i in range(count):
        c = i1 + i
        if groups is not None:
            col_group, group_size, static = groups
            g = col_group[c]
            if not static and c % group_size == 0:
                block = (
                    W1[i : i + group_size] if i + group_size <= count else Wt[c : c + group_size]
                )
                if Zt is not None:
                    block = block.masked_fill(Zt[c : c + group_size], 0.0)
                p = quantize(block.t(), bits, None, symmetric)
                scale[:, g] = p.scale[:, 0]
                zero[:, g] = p.zero[:, 0]
            s, z = scale[:, g], zero[:, g]
        w = W1[i]
        if Zt is not None:
            w.masked_fill_(Zt[c], 0.0)  # updates spread into a kept zero are dropped
        q = torch.clamp(torch.round((w - z) / s) + mid, 0, qmax)
        Qt[c] = q
        err = (w - ((q - mid) * s + z)) / U1[i, i]
        W1[i:].addr_(U1[i, i:], err, alpha=-1.0)
        Err1[i] = err
    if i2 < Wt.shape[0]:
        Wt[i2:].addmm_(U[i1:i2, i2:].t(), Err1, alpha=-1.0)


@one_thread_when_small
def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int | None = None,
    symmetric: bool = True,
    act_order: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    static_groups: bool | None = None,
    keep_zeros: bool = False,
    consume_h: bool = False,
) -> tuple[QuantizedTensor, torch.Tensor]:
    """Quantize W [out, in] against the input Hessian H [in, in] (see `hessian_update`).

    Returns the codes/scales/zeros (original column order, plain grid of grid.py) and the
    per-row output error (w - w_q) H (w - w_q)^T measured with the H given (undamped); divide
    its sum by `output_energy(W, H).sum()` for a relative output error.

    - dead inputs (diag H == 0) get H_ii = 1 and a zero weight column, as in the reference.
    - damping adds `damp * mean(diag H)` to the diagonal (raised x10 up to 4 times if H is
      still not positive definite, with a warning).
    - groups: each group's scale/zero is found when the column loop reaches the group's first
      column, from the weights as updated so far (the reference reads that slice from the
      not-yet-block-updated matrix when a group starts mid-block; this reads the updated one).
    - act_order: columns in order of decreasing diag(H). With groups this needs static groups
      (`static_groups`, the default then): every group's scale/zero comes from the original
      weights in the original column order before any update, so storage stays a plain grouped
      grid with no column permutation (g_idx) for the kernels to follow.
    - static_groups without act_order is also allowed (same rule, natural column order).
    - keep_zeros (symmetric grids only): weights exactly 0 in W (a pruning mask) stay 0 - code
      `mid`, no error spread from them, updates spread into them dropped - so sparsity
      survives quantization.
    - consume_h: H may be overwritten (the caller is done with it). A float32 CPU H of
      `IN_PLACE_MIN` columns or more (without act_order) then becomes the inverse factor in
      its own memory, one 485 MB matrix less for a 7B model's down_proj; the codes are the
      same, the row errors are computed from the factor (equal up to rounding).
    """
    static_groups = _checked(
        W, H, bits, group_size, symmetric, act_order, static_groups, keep_zeros
    )
    H0 = H.to(W.device, torch.float32)
    consume = consume_h and not act_order and consumes(H0)
    dead = torch.diagonal(H0) == 0
    H = H0
    if dead.any():  # else no copy: chol_inverse_upper damps a copy of its own (or H, consumed)
        H = H0 if consume else H0.clone()
        H[dead, dead] = 1.0
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True, stable=True)
        H = H[perm][:, perm]
    mean_diag = float(torch.diagonal(H).mean())
    U, d = chol_inverse_upper(H, damp, consume=consume)
    del H
    if consume:  # H0 is U now; with e = w - w_q: e H e^T = ||e U^-1||^2 - lambda ||e||^2
        lam = d * mean_diag

        def row_error(delta):
            x = torch.linalg.solve_triangular(U, delta, upper=True, left=False)
            return (x * x).sum(1) - lam * (delta * delta).sum(1)
    else:

        def row_error(delta):
            return ((delta @ H0) * delta).sum(1)

    grid, groups = (bits, symmetric), (group_size, static_groups)
    return _solve_rows(W, row_error, U, dead, perm, grid, groups, block_size, keep_zeros)


def _solve_rows(W, row_error_of, U, dead, perm, grid, groups, block_size, keep_zeros):
    """Quantize W's rows against the factor U; returns (codes/scales/zeros, row errors).

    Rows are solved independently against the same U: a big matrix goes in row chunks, so its
    float32 working copies stay small (a 7B-width MLP's 22016 stacked rows would need ~6 x 360
    MB at once); matrices up to ROW_CHUNK weights go in one piece."""
    (bits, symmetric), (group_size, static_groups) = grid, groups
    rows, cols = W.shape
    step = rows if rows * cols <= ROW_CHUNK else max(1, ROW_CHUNK // cols)
    q = torch.empty(rows, cols, dtype=torch.uint8, device=W.device)
    scales, zeros, row_error = [], [], torch.empty(rows, dtype=torch.float32, device=W.device)
    for r0 in range(0, rows, step):
        W0 = W[r0 : r0 + step].detach().to(torch.float32)
        Wc = W0.clone()
        Wc[:, dead] = 0.0
        scale, zero = _initial_grid(Wc, bits, group_size, symmetric, static_groups)
        if perm is not None:
            Wc = Wc[:, perm]
        Q = _solve(Wc, U, scale, zero, grid, groups, block_size, perm, keep_zeros)
        del Wc
        part = QuantizedTensor(Q.to(torch.uint8), scale, zero, bits, group_size)
        q[r0 : r0 + step] = part.q
        delta = W0 - dequantize(part)
        delta[:, dead] = 0.0  # dead inputs are always zero: their weights never reach the output
        row_error[r0 : r0 + step] = row_error_of(delta)
        scales.append(scale)
        zeros.append(zero)
    qt = QuantizedTensor(
        q=q,
        scale=torch.cat(scales) if len(scales) > 1 else scales[0],
        zero=torch.cat(zeros) if len(zeros) > 1 else zeros[0],
        bits=bits,
        group_size=group_size,
    )
    return qt, row_error


def _checked(W, H, bits, group_size, symmetric, act_order, static_groups, keep_zeros) -> bool:
    """Refuse arguments the solve cannot honour; returns static_groups with its default."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    cols = W.shape[1]
    if H.shape != (cols, cols):
        raise ValueError(f"H is {tuple(H.shape)}, expected ({cols}, {cols}) for W {tuple(W.shape)}")
    if group_size is not None and cols % group_size:
        raise ValueError(f"group_size {group_size} does not divide in_features {cols}")
    if static_groups is None:
        static_groups = act_order and group_size is not None
    if act_order and group_size is not None and not static_groups:
        raise ValueError("act_order with groups needs static_groups (a plain grouped grid)")
    if keep_zeros and not symmetric:
        raise ValueError("keep_zeros needs a symmetric grid (an asymmetric one has no exact 0)")
    return bool(static_groups)


def _initial_grid(W, bits, group_size, symmetric, static_groups):
    """Scales/zeros fixed up front (per channel, or static groups from the original weights),
    else empty [rows, groups] buffers the column loop fills as it reaches each group."""
    rows, cols = W.shape
    if group_size is None or static_groups:
        fixed = quantize(W, bits, group_size, symmetric)
        return fixed.scale.clone(), fixed.zero.clone()
    scale = torch.empty(rows, cols // group_size, dtype=torch.float32, device=W.device)
    return scale, torch.empty_like(scale)


def _solve(W, U, scale, zero, grid, group_cfg, block_size, perm, keep_zeros):
    """The block loop over W's (permuted) columns; returns the codes in original order."""
    group_size, static_groups = group_cfg
    cols = W.shape[1]
    dev = W.device
    # groups must not start mid-block in a way that straddles into the next block
    bs = max(1, block_size)
    if group_size is not None and not static_groups and bs % group_size and group_size % bs:
        bs = math.ceil(bs / group_size) * group_size
    Wt = W.t().contiguous()  # [cols, rows]: a column of W is a contiguous row here
    Qt = torch.empty_like(Wt)
    Zt = (W == 0).t().contiguous() if keep_zeros else None
    col_group = torch.arange(cols, device=dev) // group_size if group_size is not None else None
    if perm is not None and col_group is not None:
        col_group = col_group[perm]
    groups = (col_group.tolist(), group_size, static_groups) if col_group is not None else None
    for i1 in range(0, cols, bs):
        _solve_block(Wt, Qt, U, scale, zero, i1, min(i1 + bs, cols), groups, grid, Zt)

    Q = Qt.t()
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q
